"""Demonstration collection: run a task's scripted expert and stream episodes to robomimic HDF5.

The file has robomimic's layout, filter keys included (``train``/``valid``, ``20_percent``...;
see ``robopolicy.data.masks``), and ``env_args`` as robomimic writes them for robosuite envs.
Episodes are seeded 0, 1, 2, ... (eval uses seeds from 100000), kept when successful unless
asked otherwise, and written to a temporary file that is renamed into place only when the
collection is complete: an interrupted run leaves no half-written dataset behind. SIGTERM and
SIGINT unwind the writer, which deletes its temporary file; one left by a ``kill -9`` is deleted
by the next collection into the same file.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import MISSING
from tqdm import tqdm

from robopolicy.config import ConfigError, to_dict
from robopolicy.data.hdf5 import DatasetWriter, Episode
from robopolicy.data.masks import robomimic_masks
from robopolicy.interrupts import raise_if_terminated, sigterm_unwinds
from robopolicy.sim.agents import ExpertAgent
from robopolicy.sim.env_args import collection_env_args, resolve_env
from robopolicy.sim.rollout import run_episodes
from robopolicy.sim.vector import make_vector_env
from robopolicy.threads import set_num_threads


@dataclass
class CollectConfig:
    """``robopolicy collect`` settings."""

    env_id: str = ""  # a gymnasium id; may be left out when env_from_dataset is set
    # a robomimic file whose env_args make the env (more demos on a published dataset's env);
    # env_kwargs override its kwargs
    env_from_dataset: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"obs_type": "state"})
    n_demos: int = 100  # demonstrations to keep
    noise: float = 0.0  # the expert's noise knob (0 = proficient)
    seed: int = 0  # first episode seed; episodes use seed, seed+1, ...
    successful_only: bool = True
    num_envs: int = 2
    max_attempts: int = 0  # give up after this many episodes (0: 5 x n_demos)
    output: str = MISSING
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)


def collect(cfg: CollectConfig, progress: bool = True) -> dict[str, Any]:
    """Collect ``cfg.n_demos`` demonstrations into ``cfg.output``; return a summary."""
    if cfg.n_demos < 1:
        raise ValueError(f"n_demos must be >= 1, got {cfg.n_demos}")
    set_num_threads(cfg.num_threads)
    env_id, env_kwargs = resolve_env(
        cfg.env_id, to_dict(cfg.env_kwargs), cfg.env_from_dataset, where="collect"
    )
    if not env_id:
        raise ConfigError("collect: set env_id=<gymnasium id> or env_from_dataset=<file.hdf5>")
    max_attempts = cfg.max_attempts or 5 * cfg.n_demos
    envs = make_vector_env(env_id, min(cfg.num_envs, cfg.n_demos), env_kwargs)
    attempts = successes = kept = steps = 0
    start = time.perf_counter()
    try:
        env_args = collection_env_args(envs, env_id, env_kwargs)
        masks = robomimic_masks(cfg.n_demos, seed=cfg.seed)
        with sigterm_unwinds(), DatasetWriter(cfg.output, env_args, masks=masks) as writer:
            bar = tqdm(total=cfg.n_demos, desc=f"collect {env_id}", disable=not progress)
            episodes = run_episodes(
                envs, ExpertAgent(cfg.noise), itertools.count(cfg.seed), record_steps=True
            )
            for record in episodes:
                raise_if_terminated()
                attempts += 1
                successes += record.success
                if record.success or not cfg.successful_only:
                    writer.add(_to_episode(record))
                    kept += 1
                    steps += record.length
                    bar.update(1)
                if kept >= cfg.n_demos:
                    break
                if attempts >= max_attempts:
                    raise RuntimeError(
                        f"collect {env_id}: only {kept}/{cfg.n_demos} demos after "
                        f"{attempts} episodes at noise {cfg.noise}; lower the noise or raise "
                        "max_attempts. Nothing was written."
                    )
            bar.close()
    finally:
        envs.close()
    minutes = (time.perf_counter() - start) / 60
    return {
        "output": str(cfg.output),
        "env_id": env_id,
        "demos": kept,
        "samples": steps,
        "attempts": attempts,
        "expert_success_rate": successes / attempts,
        "noise": cfg.noise,
        "minutes": minutes,
        "demos_per_minute": kept / minutes if minutes > 0 else float("inf"),
    }


def _to_episode(record) -> Episode:
    dones = np.zeros(record.length, dtype=np.int64)
    dones[-1] = 1
    return Episode.from_steps(
        observations=record.observations,
        actions=np.stack(record.actions),
        rewards=np.asarray(record.rewards),
        dones=dones,
        states=np.stack(record.states),
        final_observation=record.final_observation,
    )
