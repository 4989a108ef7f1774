"""``robopolicy eval`` in shards: the episodes split into fixed groups, each evaluated on its own
(a vector env, its own seeds) by an executor, in this process or on Ray workers.

A shard's figures depend only on its episodes' seeds and its sampler seed (the eval's sampler
seed plus the shard's offset): the same eval gives the same per-episode results wherever its
shards run and however many workers there are. An eval no larger than one shard is exactly
the unsharded eval.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.config import ConfigError, to_dict
from robopolicy.distributed import check_executor
from robopolicy.distributed.executor import Job, make_executor
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


def evaluate_in_shards(cfg, env_id: str, env_kwargs: dict, out_dir: str) -> dict[str, Any]:
    """The eval of ``cfg`` (an ``EvalConfig``) over its shards; the first shard writes the
    video, the merged summary goes to ``out_dir/eval.json``."""
    from robopolicy.files import atomic_write_json

    check_executor(cfg.executor, cfg.ray)
    sizes = shard_sizes(cfg.n_episodes, cfg.episodes_per_job)
    sampler = cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed
    num_gpus = cfg.ray.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if cfg.executor == "ray" and cfg.device.startswith("cuda") else 0.0
    agent = {
        "checkpoint": cfg.checkpoint,
        "noise": cfg.noise,
        "device": cfg.device,
        "execution": to_dict(cfg.execution),
    }
    jobs, offset = [], 0
    for k, size in enumerate(sizes):
        settings = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "n_episodes": size,
            "seed": cfg.seed + offset,
            "sampler_seed": sampler + offset,
            "num_envs": cfg.num_envs,
            "out_dir": out_dir if k == 0 else None,  # the video of the first episodes
            "video_episodes": cfg.video_episodes if k == 0 else 0,
        }
        jobs.append(Job(f"shard{k}", _shard, (agent, settings), cfg.ray.num_cpus, num_gpus))
        offset += size
    start = time.perf_counter()
    outcomes = {o.key: o for o in make_executor(cfg.executor, cfg.ray).run(jobs)}
    failed = [f"{key}: {o.error}" for key, o in sorted(outcomes.items()) if not o.ok]
    if failed:
        raise RuntimeError(
            f"eval: {len(failed)} of {len(jobs)} shards failed; " + "; ".join(failed)
        )
    summary = merge([outcomes[job.key].value for job in jobs])
    summary["wall_seconds"] = time.perf_counter() - start
    summary["shards"] = len(jobs)
    atomic_write_json(Path(out_dir) / "eval.json", summary)
    return summary


def _shard(agent: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """One shard's eval (run by the executor): the agent built here, from its checkpoint."""
    from robopolicy.sim.agents import ExpertAgent
    from robopolicy.sim.evaluate import checkpoint_agent, evaluate

    if agent["checkpoint"] is not None:
        from robopolicy.checkpoint import read_config, resolve_checkpoint
        from robopolicy.inference.execution import ExecutionConfig

        path = resolve_checkpoint(agent["checkpoint"])
        execution = ExecutionConfig(**agent["execution"])
        built = checkpoint_agent(path, read_config(path), agent["device"], execution)
    else:
        built = ExpertAgent(agent["noise"])
    return evaluate(agent=built, progress=False, **settings)


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
    return summary
