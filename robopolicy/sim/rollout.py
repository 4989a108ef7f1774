"""The one rollout loop: runs seeded episodes on a vector env and yields each as it ends.

Every sub-env takes the next seed from the list as soon as its episode ends, so the loop never
idles waiting for the slowest episode of a batch, and results are the same whatever the number
of sub-envs. Eval, data collection and benchmarks all use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from robopolicy.sim.agents import Agent


@dataclass
class EpisodeRecord:
    """One finished episode; per-step data only when recording was asked for, and rendered
    frames (else ``None``) only for the first episodes of a run."""

    seed: int
    success: bool = False
    success_signal: bool = False  # the task reported ``is_success`` (locomotion tasks do not)
    episode_return: float = 0.0
    length: int = 0
    frames: list[np.ndarray] | None = None
    observations: list[dict[str, np.ndarray]] = field(default_factory=list)
    final_observation: dict[str, np.ndarray] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)


@dataclass
class RolloutTiming:
    """Wall time spent in the agent and in env steps, and the number of actions taken."""

    agent_seconds: float = 0.0
    env_seconds: float = 0.0
    actions: int = 0


def _slice(obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: np.array(v[i]) for k, v in obs.items()}


def run_episodes(
    envs: gym.vector.VectorEnv,
    agent: Agent,
    seeds: Iterable[int],
    *,
    record_steps: bool = False,
    video_episodes: int = 0,
    timing: RolloutTiming | None = None,
) -> Iterator[EpisodeRecord]:
    """Yield one ``EpisodeRecord`` per seed, in the order episodes finish.

    ``seeds`` may be endless (data collection stops consuming when it has enough). The first
    ``video_episodes`` episodes keep their rendered frames (needs ``render_mode="rgb_array"``).
    """
    n = envs.num_envs
    seed_iter = iter(seeds)
    timing = timing if timing is not None else RolloutTiming()
    active: list[EpisodeRecord | None] = [None] * n
    started = 0

    def start_episodes(mask: np.ndarray, obs: dict | None) -> dict:
        nonlocal started
        seeds_now: list[int | None] = [None] * n
        for i in np.flatnonzero(mask):
            seed = next(seed_iter, None)
            if seed is None:
                mask[i] = False
                continue
            seeds_now[i] = int(seed)
            active[i] = EpisodeRecord(
                seed=int(seed), frames=[] if started < video_episodes else None
            )
            started += 1
        if not mask.any():
            return obs
        new_obs, _ = envs.reset(seed=seeds_now, options={"reset_mask": mask.copy()})
        agent.reset(mask)
        if obs is None:
            return new_obs
        if not isinstance(obs, dict):  # a Box observation space (e.g. gymnasium's locomotion)
            obs[mask] = new_obs[mask]
            return obs
        for key in obs:
            obs[key][mask] = new_obs[key][mask]
        return obs

    agent.prepare(envs)
    obs = start_episodes(np.ones(n, dtype=bool), None)
    if obs is None:
        return
    _capture_frames(envs, active)
    while any(record is not None for record in active):
        t0 = time.perf_counter()
        actions = np.asarray(agent.act(obs, envs))
        t1 = time.perf_counter()
        states = envs.call("get_state") if record_steps else None
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        timing.agent_seconds += t1 - t0
        timing.env_seconds += time.perf_counter() - t1
        finished = np.zeros(n, dtype=bool)
        no_success = np.zeros(n, dtype=bool)
        for i, record in enumerate(active):
            if record is None:
                continue
            timing.actions += 1
            record.length += 1
            record.episode_return += float(rewards[i])
            # tasks without a success signal (e.g. gymnasium's locomotion) never succeed
            record.success = record.success or bool(infos.get("is_success", no_success)[i])
            record.success_signal = record.success_signal or "is_success" in infos
            if record_steps:
                record.observations.append(_slice(obs, i))
                record.actions.append(np.array(actions[i]))
                record.rewards.append(float(rewards[i]))
                record.states.append(np.asarray(states[i]))
            finished[i] = bool(terminated[i] or truncated[i])
        _capture_frames(envs, active)
        for i in np.flatnonzero(finished):
            record = active[i]
            if record_steps:
                record.final_observation = _slice(next_obs, i)
            active[i] = None
            yield record
        obs = next_obs
        if finished.any():
            obs = start_episodes(finished, obs)


def _capture_frames(envs: gym.vector.VectorEnv, active: list[EpisodeRecord | None]) -> None:
    if not any(r is not None and r.frames is not None for r in active):
        return
    frames = envs.call("render")
    for record, frame in zip(active, frames, strict=True):
        if record is not None and record.frames is not None and frame is not None:
            record.frames.append(frame)
