"""Offline RL datasets: episodes of flat observations with rewards, terminals and timeouts.

On disk they are ordinary robomimic-layout HDF5 files (``robopolicy.data.hdf5``) with one
observation key, ``OBS_KEY``. ``dones`` holds the *terminals* (the episode reached a state
without a future, e.g. the hopper fell). An episode whose last step is not terminal was cut
short: by the time limit or by the end of collection. That is D4RL's ``timeouts`` flag, and
``OfflineData.timeouts`` recovers it, so the file need not store it twice. Return references
for normalised scores (a random and an expert return) travel in ``env_args``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robopolicy.data.hdf5 import DatasetError, Episode, load_episodes, read_env_args

OBS_KEY = "obs"
REFERENCES_KEY = "return_references"  # env_args[...] = {"random": R, "expert": R, "source": ...}
OBS_KEYS_KEY = "obs_keys"  # env_args[...]: the dict-observation keys concatenated into "obs"


@dataclass
class OfflineData:
    """All transitions of a dataset, episode after episode, as (N, ...) arrays.

    ``episode_ends[i]`` is one past the last index of episode i.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminals: np.ndarray  # bool
    episode_ends: np.ndarray
    env_id: str
    env_kwargs: dict[str, Any]
    references: dict[str, Any] | None
    obs_keys: list[str] | None = None  # dict-observation tasks: keys concatenated, in order

    @property
    def timeouts(self) -> np.ndarray:
        """True at the last step of every episode that did not end in a terminal state."""
        flags = np.zeros(len(self.actions), dtype=bool)
        last = self.episode_ends - 1
        flags[last] = ~self.terminals[last]
        return flags

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]])

    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards, self.episode_starts)

    def tensors(self) -> dict[str, Tensor]:
        """Float32 tensors for a replay buffer."""
        return {
            "obs": torch.as_tensor(self.obs, dtype=torch.float32),
            "actions": torch.as_tensor(self.actions, dtype=torch.float32),
            "rewards": torch.as_tensor(self.rewards, dtype=torch.float32),
            "next_obs": torch.as_tensor(self.next_obs, dtype=torch.float32),
            "terminals": torch.as_tensor(self.terminals),
            "timeouts": torch.as_tensor(self.timeouts),
        }


def episode(
    obs: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_obs: np.ndarray,
    terminal: bool,
    states: np.ndarray | None = None,
) -> Episode:
    """One episode in the dataset layout; ``terminal`` marks its last step."""
    dones = np.zeros(len(actions), dtype=np.int64)
    dones[-1] = int(terminal)
    return Episode(
        obs={OBS_KEY: obs.astype(np.float32)},
        next_obs={OBS_KEY: next_obs.astype(np.float32)},
        actions=actions.astype(np.float32),
        rewards=rewards.astype(np.float32),
        dones=dones,
        states=np.zeros((len(actions), 0)) if states is None else states,
    )


def load_offline_data(path: str | os.PathLike[str]) -> OfflineData:
    """Read a dataset written by ``robopolicy offline-data`` (or any file with ``obs/obs``)."""
    episodes = load_episodes(path, keys=[OBS_KEY])
    if not episodes:
        raise DatasetError(f"{path}: no episodes")
    for i, ep in enumerate(episodes):
        if ep.dones[:-1].any():
            raise DatasetError(f"{path}: demo_{i} has a terminal before its last step")
    env_args = read_env_args(path)
    cat = np.concatenate
    return OfflineData(
        obs=cat([ep.obs[OBS_KEY] for ep in episodes]).astype(np.float32),
        actions=cat([ep.actions for ep in episodes]).astype(np.float32),
        rewards=cat([ep.rewards for ep in episodes]).astype(np.float32),
        next_obs=cat([ep.next_obs[OBS_KEY] for ep in episodes]).astype(np.float32),
        terminals=cat([ep.dones for ep in episodes]).astype(bool),
        episode_ends=np.cumsum([ep.num_samples for ep in episodes]),
        env_id=env_args["env_name"],
        env_kwargs=dict(env_args.get("env_kwargs") or {}),
        references=env_args.get(REFERENCES_KEY),
        obs_keys=env_args.get(OBS_KEYS_KEY),
    )


def normalized_return(returns: float | np.ndarray, references: dict[str, Any] | None):
    """100 (R - R_random) / (R_expert - R_random), D4RL's score; None without references."""
    if not references:
        return None
    return (
        100
        * (np.asarray(returns) - references["random"])
        / (references["expert"] - references["random"])
    )
