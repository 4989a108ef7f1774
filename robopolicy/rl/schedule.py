"""Learning-rate decay over a run's env-step budget, as a pure function of progress.

A factor computed from the env-step counter (rather than a stateful scheduler) needs nothing
saved for an exact resume: the resumed run recomputes the same factor at the same step. It
exists because late evals of a run move by several points (a seed fell from 84-94% to 68% in
its last 35k steps): a smaller step size near the end lets the actor and critic settle.

    none    f(p) = 1
    linear  f(p) = 1 - (1 - floor) p
    cosine  f(p) = floor + (1 - floor) (1 + cos(pi p)) / 2
with p = env_steps / budget in [0, 1]; lr = initial lr * f(p), ending at floor * initial lr.
"""

from __future__ import annotations

import math

LR_DECAYS = ("none", "linear", "cosine")


def lr_factor(kind: str, env_steps: int, budget: int, floor: float) -> float:
    """The multiplier on the initial learning rates at ``env_steps`` of ``budget``."""
    if kind not in LR_DECAYS:
        raise ValueError(f"agent.lr_decay {kind!r} not in {LR_DECAYS}")
    progress = min(max(env_steps / budget, 0.0), 1.0) if budget > 0 else 1.0
    if kind == "linear":
        return 1.0 - (1.0 - floor) * progress
    if kind == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
