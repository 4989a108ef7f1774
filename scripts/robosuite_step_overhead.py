"""Measure what the robosuite adapter adds to ``env.step``: robosuite's own step against the
adapter's, on the same robosuite env in one process, interleaved in rounds (alternating which
goes first) so that other load on the machine hits both alike. Prints the median per-step
times and their ratio.

    python scripts/robosuite_step_overhead.py [EnvName] [rounds] [steps per round]
"""

from __future__ import annotations

import statistics
import sys
import time

import gymnasium as gym
import numpy as np

import robopolicy  # noqa: F401  (registers robosuite/<EnvName>-v0)


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "Lift"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    env = gym.make(f"robosuite/{name}-v0").unwrapped
    raw = env.robosuite_env
    action = np.zeros(7, dtype=np.float32)
    times: dict[str, list[float]] = {"robosuite": [], "adapter": []}
    for i in range(rounds):
        order = [("robosuite", raw.step), ("adapter", env.step)]
        for label, step in order if i % 2 == 0 else order[::-1]:  # neither always goes first
            env.reset(seed=0)
            start = time.perf_counter()
            for _ in range(steps):
                step(action)
            times[label].append((time.perf_counter() - start) / steps)
    a, b = statistics.median(times["robosuite"]), statistics.median(times["adapter"])
    print(
        f"{name}: robosuite step {a * 1e3:.2f} ms, adapter step {b * 1e3:.2f} ms, ratio {b / a:.3f}"
    )


if __name__ == "__main__":
    main()
