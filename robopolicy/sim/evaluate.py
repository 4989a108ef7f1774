"""The evaluation harness: N seeded episodes of any agent, summarised with honest statistics.

Writes ``eval.json`` (success rate, Wilson 95% interval, n, seeds, mean return, mean episode
length, time per action) and an mp4 of the first episodes, and returns the summary.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robopolicy.checkpoint import BEST
from robopolicy.config import ConfigError, load_config, to_dict
from robopolicy.distributed import RayConfig, check_executor
from robopolicy.distributed.executor import Job, make_executor
from robopolicy.files import atomic_write_json
from robopolicy.inference.execution import ExecutionConfig, describe
from robopolicy.inference.guard import ObsGuardConfig
from robopolicy.sim.agents import Agent, ExpertAgent, GuardedAgent, PolicyAgent
from robopolicy.sim.env_args import resolve_env
from robopolicy.sim.rollout import RolloutTiming, run_episodes
from robopolicy.sim.shards import merge, shard_sizes
from robopolicy.sim.stats import wilson_interval
from robopolicy.sim.vector import make_vector_env
from robopolicy.sim.video import write_mp4
from robopolicy.threads import set_num_threads


def evaluate(
    env_id: str,
    agent: Agent,
    *,
    n_episodes: int = 50,
    seed: int = 100_000,
    num_envs: int = 2,
    env_kwargs: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    video_episodes: int = 2,
    progress: bool = True,
    sampler_seed: int | None = None,
    obs_guard: ObsGuardConfig | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``n_episodes`` episodes with seeds ``seed, seed+1, ...`` and summarise them.

    The agent runs behind the guard (``GuardedAgent``; ``obs_guard`` defaults to warning about
    observations far outside the training data): a non-finite action raises
    ``NonFiniteActionError`` instead of being stepped.

    The default seeds start at 100000, away from the seeds data collection uses (0, 1, ...),
    so an evaluation never replays the initial states of the training demonstrations.

    The agent's own randomness (a diffusion policy's noise, a stochastic actor's draws) comes
    from torch seeded with ``sampler_seed`` (default ``seed``), so the same agent on the same
    seeds scores the same every time; the caller's torch RNG is restored afterwards, so an eval
    during training does not shift the training's random stream.
    ``settings``: how the caller set this eval up, recorded in ``eval.json`` (``robopolicy
    eval`` reads it back before it writes into the same folder again).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    agent = GuardedAgent(agent, obs_guard if obs_guard is not None else ObsGuardConfig())
    env_kwargs = dict(env_kwargs or {})
    if out_dir is None:
        video_episodes = 0
    if video_episodes:
        env_kwargs.setdefault("render_mode", "rgb_array")
    seeds = list(range(seed, seed + n_episodes))
    envs = make_vector_env(env_id, min(num_envs, n_episodes), env_kwargs)
    timing = RolloutTiming()
    start = time.perf_counter()
    records = []
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed if sampler_seed is None else sampler_seed)
            episodes = run_episodes(
                envs, agent, seeds, video_episodes=video_episodes, timing=timing
            )
            bar = tqdm(episodes, total=n_episodes, desc=f"eval {env_id}", disable=not progress)
            records.extend(bar)
        fps = int(envs.metadata.get("render_fps", 10))
    finally:
        envs.close()
    wall = time.perf_counter() - start
    records.sort(key=lambda r: r.seed)
    successes = sum(r.success for r in records)
    low, high = wilson_interval(successes, len(records))
    summary: dict[str, Any] = {
        "env_id": env_id,
        "agent": agent.name,
        "env_kwargs": {k: v for k, v in env_kwargs.items() if k != "render_mode"},
        "n_episodes": len(records),
        "seeds": [r.seed for r in records],
        "success_signal": any(r.success_signal for r in records),
        "success_rate": successes / len(records),
        "success_ci95": [low, high],
        "mean_return": float(np.mean([r.episode_return for r in records])),
        "mean_episode_length": float(np.mean([r.length for r in records])),
        "time_per_action_ms": 1e3 * timing.agent_seconds / max(timing.actions, 1),
        "env_step_ms": 1e3 * timing.env_seconds / max(timing.actions, 1),
        **agent.metrics(),
        "wall_seconds": wall,
        "per_episode": [
            {"seed": r.seed, "success": r.success, "return": r.episode_return, "length": r.length}
            for r in records
        ],
    }
    if settings is not None:
        summary["settings"] = settings
    if out_dir is not None:
        out_dir = Path(out_dir)
        videos = [r.frames for r in records if r.frames]
        if videos:
            summary["video"] = str(write_mp4(out_dir / "rollouts.mp4", videos, fps=fps))
        atomic_write_json(out_dir / "eval.json", summary)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line for the terminal: the figure a user came for, with its uncertainty (tasks
    without a success signal, like gymnasium's locomotion, are summarised by their return)."""
    low, high = summary["success_ci95"]
    success = (
        f"success {summary['success_rate']:.0%} [{low:.0%}, {high:.0%}] "
        if summary.get("success_signal", True)
        else ""
    )
    return (
        f"{summary['env_id']} {summary['agent']}: {success}over n={summary['n_episodes']}, "
        f"mean return {summary['mean_return']:.2f}, mean length "
        f"{summary['mean_episode_length']:.1f}, {summary['time_per_action_ms']:.2f} ms/action"
    )


@dataclass
class EvalConfig:
    """``robopolicy eval`` settings: a checkpoint, or ``agent: expert`` for the scripted expert.

    With a checkpoint, ``env_id`` and ``env_kwargs`` default to the task it was trained on and
    the results go to ``<run>/eval-<checkpoint step>-<agent and execution>/`` unless
    ``out_dir`` is set (it must be for a checkpoint outside a run's ``checkpoints/``). An
    ``eval.json`` already there from other settings is never overwritten.
    """

    checkpoint: str | None = None
    # which of a run's checkpoints: last (its final, the default) or best (an RL run's actor at
    # its best eval, checkpoints/best)
    pick: str = "last"
    env_id: str | None = None
    env_kwargs: dict[str, Any] | None = None
    # a robomimic file whose env_args make the env (e.g. a published dataset), in place of the
    # checkpoint's task; env_kwargs override its kwargs
    env_from_dataset: str | None = None
    agent: str = "expert"  # expert | policy (implied by checkpoint)
    noise: float = 0.0
    n_episodes: int = 50
    seed: int = 100_000
    sampler_seed: int | None = None  # torch seed of the agent's sampling; default: seed
    num_envs: int = 2
    video_episodes: int = 2
    out_dir: str | None = None
    device: str = "cpu"
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    obs_guard: ObsGuardConfig = field(default_factory=ObsGuardConfig)
    # more episodes than this are evaluated in shards of this many, each with its own seeds
    # (see sim/shards.py): the same figures locally and on Ray workers (0: one shard)
    episodes_per_job: int = 100
    executor: str = "local"  # local | ray: the shards as Ray tasks
    ray: RayConfig = field(default_factory=RayConfig)
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)


def checkpoint_agent(path: Path, config: dict[str, Any], device: str, execution) -> Agent:
    """The rollout agent of any checkpoint: an RL actor with its frozen base, an offline agent,
    or a BC policy run with ``execution`` (an ``ExecutionConfig`` or its dict)."""
    if "rl" in config:  # robopolicy finetune: the actor (plus its frozen base)
        from robopolicy.rl.actors import load_rl_agent

        return load_rl_agent(path, config, device)
    if "offline_agent" in config:  # robopolicy offline: TD3+BC or IQL
        from robopolicy.offline.agents import load_offline_agent
        from robopolicy.rl.actors import FlatObsAgent

        obs_keys = config["offline_agent"].get("obs_keys")
        return FlatObsAgent(load_offline_agent(path, config), obs_keys, name="offline")
    from robopolicy.checkpoint import load_policy

    policy = load_policy(path, device=device)
    execution = ExecutionConfig(**to_dict(execution))
    return PolicyAgent(
        policy,
        name=f"{policy.cfg.type}-{policy.cfg.backbone} {describe(execution, policy)}",
        execution=execution,
    )


def load_eval_config(target: str, overrides: list[str]) -> EvalConfig:
    """``robopolicy eval TARGET``: a checkpoint (or its ``checkpoints/`` or run folder, or
    ``<run>/best``), or an eval config file."""
    path = Path(target)
    if path.is_dir() or (path.name == BEST and path.parent.is_dir()):  # <run>/best
        return load_config(None, EvalConfig, [f"checkpoint={target}", *overrides])
    if not Path(target).exists():
        raise ConfigError(f"eval: no checkpoint or config at {target}")
    return load_config(target, EvalConfig, overrides)


def run_eval_config(cfg: EvalConfig) -> dict[str, Any]:
    """Load the agent and evaluate it; the caller's torch RNG is left as it was (building the
    policy before its weights are loaded draws from it, and ``evaluate`` restores its own)."""
    set_num_threads(cfg.num_threads)
    with torch.random.fork_rng():
        return _run_eval_config(cfg)


def _run_eval_config(cfg: EvalConfig) -> dict[str, Any]:
    env_id, env_kwargs, out_dir = cfg.env_id, cfg.env_kwargs, cfg.out_dir
    source = None
    if cfg.checkpoint is not None:
        from robopolicy.checkpoint import checkpoint_run, read_config, read_meta, resolve_checkpoint

        path = resolve_checkpoint(cfg.checkpoint, cfg.pick)
        source = str(path)
        config = read_config(path)
        task = config.get("task", {})
        env_id = env_id or task.get("env_id")
        env_kwargs = env_kwargs if env_kwargs is not None else task.get("env_kwargs")
        agent = checkpoint_agent(path, config, cfg.device, cfg.execution)
        if out_dir is None:
            run = checkpoint_run(path)
            if run is None:
                raise ConfigError(
                    f"eval: {path} is not inside a run's checkpoints/ folder: set out_dir= for "
                    "the results"
                )
            out_dir = str(run / f"eval-{read_meta(path)['step']:07d}-{_slug(agent.name)}")
    elif cfg.agent == "expert":
        agent = ExpertAgent(cfg.noise)
    else:
        raise ConfigError(f"eval: agent {cfg.agent!r} needs a checkpoint=...; or use 'expert'")
    if cfg.env_from_dataset:
        env_id, env_kwargs = resolve_env(
            cfg.env_id or "", cfg.env_kwargs or {}, cfg.env_from_dataset, where="eval"
        )
    if env_id is None:
        raise ConfigError("eval: env_id is not set (and no checkpoint names one)")
    if out_dir is None:
        raise ConfigError("eval: out_dir is not set")
    env_kwargs = dict(env_kwargs if env_kwargs is not None else {"obs_type": "state"})
    settings = {
        "checkpoint": source,
        "agent": agent.name,
        "noise": cfg.noise if source is None else None,
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "n_episodes": cfg.n_episodes,
        "seed": cfg.seed,
        "sampler_seed": cfg.sampler_seed,
        "execution": to_dict(cfg.execution),
        "device": cfg.device,
    }
    _refuse_other_results(Path(out_dir), settings)
    if cfg.executor != "local" or len(shard_sizes(cfg.n_episodes, cfg.episodes_per_job)) > 1:
        shards = evaluate_in_shards(cfg, env_id, env_kwargs, out_dir, settings)
        return {**shards, "out_dir": out_dir}
    summary = evaluate(
        env_id,
        agent,
        n_episodes=cfg.n_episodes,
        seed=cfg.seed,
        num_envs=cfg.num_envs,
        env_kwargs=env_kwargs,
        out_dir=out_dir,
        video_episodes=cfg.video_episodes,
        sampler_seed=cfg.sampler_seed,
        obs_guard=ObsGuardConfig(**to_dict(cfg.obs_guard)),
        settings=settings,
    )
    return {**summary, "out_dir": out_dir}


def _slug(name: str) -> str:
    """An agent's name as a folder name: ``diffusion-unet ddpm-20 rti(K'=2)`` ->
    ``diffusion-unet-ddpm-20-rti-k-2``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _refuse_other_results(out_dir: Path, settings: dict[str, Any]) -> None:
    """An ``eval.json`` in ``out_dir`` from other settings (or from a training run's own
    final eval, which records none) stays: the same settings would only write it again."""
    existing = out_dir / "eval.json"
    if not existing.is_file():
        return
    before = json.loads(existing.read_text()).get("settings")
    now = json.loads(json.dumps(settings))  # as eval.json holds them (tuples as lists)
    if before == now:
        return
    differ = (
        sorted(k for k in now if before.get(k) != now[k])
        if isinstance(before, dict)
        else ["(not recorded)"]
    )
    raise FileExistsError(
        f"eval: {existing} holds the results of another eval (settings that differ: "
        f"{', '.join(differ)}); set out_dir=<new folder>, or remove it"
    )


# ---- an eval in shards (sim/shards.py), locally or on Ray workers ------------------------------
def evaluate_in_shards(
    cfg, env_id: str, env_kwargs: dict, out_dir: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """The eval of ``cfg`` (an ``EvalConfig``) over its shards; the first shard writes the
    video, the merged summary (with the eval's ``settings``) goes to ``out_dir/eval.json``."""
    check_executor(cfg.executor, cfg.ray)
    sizes = shard_sizes(cfg.n_episodes, cfg.episodes_per_job)
    sampler = cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed
    num_gpus = cfg.ray.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if cfg.executor == "ray" and cfg.device.startswith("cuda") else 0.0
    agent = {
        "checkpoint": cfg.checkpoint,
        "pick": cfg.pick,
        "noise": cfg.noise,
        "device": cfg.device,
        "execution": to_dict(cfg.execution),
        "obs_guard": to_dict(cfg.obs_guard),
    }
    jobs, offset = [], 0
    for k, size in enumerate(sizes):
        shard = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "n_episodes": size,
            "seed": cfg.seed + offset,
            "sampler_seed": sampler + offset,
            "num_envs": cfg.num_envs,
            "out_dir": out_dir if k == 0 else None,  # the video of the first episodes
            "video_episodes": cfg.video_episodes if k == 0 else 0,
        }
        jobs.append(Job(f"shard{k}", _shard, (agent, shard), cfg.ray.num_cpus, num_gpus))
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
    summary["settings"] = settings
    atomic_write_json(Path(out_dir) / "eval.json", summary)
    return summary


def _shard(agent: dict[str, Any], shard: dict[str, Any]) -> dict[str, Any]:
    """One shard's eval (run by the executor, maybe on a Ray worker): the agent built there,
    from its checkpoint."""
    if agent["checkpoint"] is not None:
        from robopolicy.checkpoint import read_config, resolve_checkpoint
        from robopolicy.inference.execution import ExecutionConfig

        path = resolve_checkpoint(agent["checkpoint"], agent["pick"])
        execution = ExecutionConfig(**agent["execution"])
        built = checkpoint_agent(path, read_config(path), agent["device"], execution)
    else:
        built = ExpertAgent(agent["noise"])
    guard = ObsGuardConfig(**agent["obs_guard"])
    return evaluate(agent=built, progress=False, obs_guard=guard, **shard)
