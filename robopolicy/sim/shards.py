"""``robopolicy eval`` in shards: the episodes split into fixed groups, each evaluated on its own
(a vector env, its own seeds) by an executor, in this process or on Ray workers.

A shard's figures depend only on its episodes' seeds and its sampler seed (the eval's sampler
seed plus the shard's offset): the same eval gives the same per-episode results wherever its
shards run and however many workers there are. An eval no larger than one shard is exactly
the unsharded eval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robopolicy.config import ConfigError
from robopolicy.sim.stats import wilson_interval


def shard_sizes(n_episodes: int, per_shard: int) -> list[int]:
    """``n_episodes`` in shards of ``per_shard`` (0: one shard), the last one the rest."""
    if per_shard < 0:
        raise ConfigError(f"episodes_per_job must be >= 0, got {per_shard}")
    if per_shard == 0 or n_episodes <= per_shard:
        return [n_episodes]
    return [per_shard] * (n_episodes // per_shard) + [n_episodes % per_shard] * bool(
        n_episodes % per_shard
    )


def merge(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of consecutive shards: their episodes together; per-action figures weighted
    by each shard's actions (its episodes' lengths)."""
    first = shards[0]
    episodes = [e for s in shards for e in s["per_episode"]]
    actions = np.array([sum(e["length"] for e in s["per_episode"]) for s in shards], float)
    weights = actions / actions.sum()
    successes = sum(bool(e["success"]) for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    summary = {
        **first,
        "n_episodes": len(episodes),
        "seeds": [e["seed"] for e in episodes],
        "success_signal": any(s["success_signal"] for s in shards),
        "success_rate": successes / len(episodes),
        "success_ci95": [low, high],
        "mean_return": float(np.mean([e["return"] for e in episodes])),
        "mean_episode_length": float(np.mean([e["length"] for e in episodes])),
        "per_episode": episodes,
    }
    for key in ("time_per_action_ms", "env_step_ms", "network_evaluations_per_action"):
        if key in first:
            summary[key] = float(np.dot(weights, [s[key] for s in shards]))
    if "obs_out_of_range" in first:  # the guard's count of observations outside the data
        summary["obs_out_of_range"] = sum(s["obs_out_of_range"] for s in shards)
    return summary
