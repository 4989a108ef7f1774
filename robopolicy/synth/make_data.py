"""``robopolicy offline-data CONFIG``: D4RL-style datasets made with our own SAC runs.

- ``medium``: rollouts of a partly trained SAC policy (actions sampled from it, as D4RL did),
  ``transitions`` in all, the last episode cut short where the budget ends;
- ``medium_replay``: everything that SAC run's replay buffer held when that policy was saved,
  i.e. all the experience that led up to it.

- ``scripted_mix``: a mixed-quality manipulation dataset: the task's scripted expert at each
  of ``noise_levels`` for ``episodes_per_level`` episodes, failures kept. Observations are the
  state keys concatenated in sorted order (the key order is stored with the data); an episode
  is terminal where it succeeds, else cut by the time limit.

The source of medium / medium_replay is a ``robopolicy finetune`` run with ``method: scratch``
and SAC (its checkpoints hold the replay buffer). Return references for normalised scores go
into the file: a uniform random policy's mean return and the expert's (the run's final policy,
evaluated deterministically, or the noiseless scripted expert), both measured here over
``reference_episodes`` episodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robopolicy.checkpoint import (
    CheckpointError,
    load_training_state,
    read_config,
    resolve_checkpoint,
)
from robopolicy.data.hdf5 import make_env_args, write_dataset
from robopolicy.rl.actors import load_rl_agent
from robopolicy.sim.vector import make_env
from robopolicy.synth.offline_data import OBS_KEYS_KEY, REFERENCES_KEY, episode

KINDS = ("medium", "medium_replay", "scripted_mix")


@dataclass
class OfflineDataConfig:
    source: str = "???"  # a `robopolicy finetune` SAC-from-scratch run directory
    source_config: str | None = None  # the finetune config that makes `source` (bench pgd)
    kind: str = "medium"  # medium | medium_replay
    policy_step: int = 0  # env step of the source checkpoint that is the "medium" policy
    transitions: int = 100_000  # medium: how many to collect
    output: str = "???"
    reference_episodes: int = 10
    seed: int = 0
    # scripted_mix:
    env_id: str | None = None  # a robopolicy task, e.g. robopolicy/Lift-v0
    noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.6, 1.2])
    episodes_per_level: int = 50


def make_offline_data(cfg: OfflineDataConfig) -> dict[str, Any]:
    if cfg.kind not in KINDS:
        raise ValueError(f"kind {cfg.kind!r} not in {KINDS}")
    if cfg.kind == "scripted_mix":
        return _scripted_mix(cfg)
    start = time.perf_counter()
    run = Path(cfg.source)
    checkpoint = resolve_checkpoint(run / "checkpoints" / f"{cfg.policy_step:07d}")
    config = read_config(checkpoint)
    rl = config.get("rl")
    if rl is None or rl["method"] != "scratch" or rl["algo"] != "sac":
        raise CheckpointError(f"{checkpoint} is not a SAC-from-scratch finetune checkpoint")
    env_id, env_kwargs = rl["env_id"], rl["env_kwargs"] or {}
    if cfg.kind == "medium":
        actor = load_rl_agent(checkpoint, config).actor
        episodes = _rollouts(env_id, env_kwargs, actor, cfg.transitions, cfg.seed)
    else:
        episodes = _replay_episodes(checkpoint)
    references = {
        "random": _mean_return(env_id, env_kwargs, None, cfg.reference_episodes, cfg.seed),
        "expert": _mean_return(
            env_id,
            env_kwargs,
            load_rl_agent(resolve_checkpoint(run), read_config(run)).actor,
            cfg.reference_episodes,
            cfg.seed,
        ),
        "expert_source": str(resolve_checkpoint(run)),
        "episodes": cfg.reference_episodes,
    }
    env_args = {**make_env_args(env_id, env_kwargs), REFERENCES_KEY: references}
    return _write(cfg.output, episodes, env_args, start)


def _write(output: str, episodes: list, env_args: dict[str, Any], start: float) -> dict[str, Any]:
    """Write the dataset atomically and summarise it."""
    path = write_dataset(output, episodes, env_args)
    return {
        "output": str(path),
        "episodes": len(episodes),
        "transitions": int(sum(ep.num_samples for ep in episodes)),
        "mean_return": float(np.mean([ep.rewards.sum() for ep in episodes])),
        "references": env_args[REFERENCES_KEY],
        "minutes": (time.perf_counter() - start) / 60,
    }


def _scripted_mix(cfg: OfflineDataConfig) -> dict[str, Any]:
    from robopolicy.sim.agents import ExpertAgent
    from robopolicy.sim.rollout import run_episodes
    from robopolicy.sim.vector import make_vector_env

    if not cfg.env_id:
        raise ValueError("kind scripted_mix needs env_id (a robopolicy task)")
    start = time.perf_counter()
    env_kwargs = {"obs_type": "state"}
    envs = make_vector_env(cfg.env_id, 2, env_kwargs)
    episodes, keys = [], None
    try:
        for level, noise in enumerate(cfg.noise_levels):
            seeds = range(
                cfg.seed + level * 100_000, cfg.seed + level * 100_000 + cfg.episodes_per_level
            )
            records = run_episodes(envs, ExpertAgent(noise), iter(seeds), record_steps=True)
            for record in tqdm(records, total=cfg.episodes_per_level, desc=f"noise {noise:g}"):
                keys = keys or sorted(record.final_observation)
                obs = np.stack([_flat(o, keys) for o in record.observations])
                final = _flat(record.final_observation, keys)
                episodes.append(
                    episode(
                        obs,
                        np.stack(record.actions),
                        np.asarray(record.rewards),
                        np.concatenate([obs[1:], final[None]]),
                        record.success,
                        np.stack(record.states),
                    )
                )
        reference = list(
            run_episodes(
                envs, ExpertAgent(0.0), iter(range(10_000, 10_000 + cfg.reference_episodes))
            )
        )
    finally:
        envs.close()
    references = {
        "random": _mean_return(cfg.env_id, env_kwargs, None, cfg.reference_episodes, cfg.seed),
        "expert": float(np.mean([r.episode_return for r in reference])),
        "expert_source": "scripted expert, noise 0",
        "episodes": cfg.reference_episodes,
    }
    env_args = {
        **make_env_args(cfg.env_id, env_kwargs),
        REFERENCES_KEY: references,
        OBS_KEYS_KEY: keys,
    }
    return _write(cfg.output, episodes, env_args, start)


def _flat(obs: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(obs[k], dtype=np.float32).ravel() for k in keys])


def _rollouts(env_id, env_kwargs, actor, budget: int, seed: int) -> list:
    env = make_env(env_id, **env_kwargs)
    episodes = []
    collected = 0
    progress = tqdm(total=budget, desc="medium rollouts", unit="step")
    try:
        while collected < budget:
            obs, _ = env.reset(seed=seed + len(episodes))
            rows: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "next", "states")}
            terminated = False
            while collected < budget:
                state = np.concatenate([env.unwrapped.data.qpos, env.unwrapped.data.qvel])
                with torch.no_grad():
                    action = actor(torch.as_tensor(obs, dtype=torch.float32)[None])[0][0].numpy()
                next_obs, reward, terminated, truncated, _ = env.step(action)
                for key, value in zip(rows, (obs, action, reward, next_obs, state), strict=True):
                    rows[key].append(value)
                obs = next_obs
                collected += 1
                progress.update(1)
                if terminated or truncated:
                    break
            episodes.append(
                episode(
                    np.stack(rows["obs"]),
                    np.stack(rows["actions"]),
                    np.asarray(rows["rewards"]),
                    np.stack(rows["next"]),
                    bool(terminated),
                    np.stack(rows["states"]),
                )
            )
    finally:
        progress.close()
        env.close()
    return episodes


def _replay_episodes(checkpoint: Path) -> list:
    """The checkpoint's replay buffer, column by column in time order, cut at episode ends."""
    replay = load_training_state(checkpoint)["replay"]
    filled, cursor = int(replay["filled"]), int(replay["cursor"])
    rows = replay["obs"].shape[0]
    order = np.arange(filled) if filled < rows or cursor == 0 else np.roll(np.arange(rows), -cursor)
    episodes = []
    for env in range(replay["obs"].shape[1]):
        get = {k: replay[k][order, env].numpy() for k in replay if k not in ("cursor", "filled")}
        ends = np.flatnonzero(get["ended"]) + 1
        if len(ends) == 0 or ends[-1] != len(order):
            ends = np.append(ends, len(order))  # the episode running at save time: cut short
        begin = 0
        for end in ends:
            piece = slice(begin, end)
            episodes.append(
                episode(
                    get["obs"][piece],
                    get["actions"][piece],
                    get["rewards"][piece],
                    get["next_obs"][piece],
                    bool(get["terminated"][end - 1]),
                )
            )
            begin = end
    return episodes


def _mean_return(env_id, env_kwargs, actor, episodes: int, seed: int) -> float:
    """Mean return of a uniform random policy (actor None) or a SAC actor's mean action."""
    env = make_env(env_id, **env_kwargs)
    env.action_space.seed(seed)
    total = 0.0
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=10_000 + seed + i)
            done = False
            while not done:
                if actor is None:
                    action = env.action_space.sample()
                else:
                    with torch.no_grad():
                        x = torch.as_tensor(obs, dtype=torch.float32)[None]
                        action = actor(x, deterministic=True)[0][0].numpy()
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return total / episodes
