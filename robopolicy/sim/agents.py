"""What the rollout loop drives: anything that maps a batch of observations to actions.

The scripted experts read privileged simulator state, so they run inside each sub-env (see
``MujocoTaskEnv.attach_expert``) and are reached through ``VectorEnv.call``; policies will act
on the observation batch alone.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np


class Agent(Protocol):
    name: str

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        """Called once before the first reset."""

    def reset(self, env_mask: np.ndarray) -> None:
        """New episodes start in the sub-envs where ``env_mask`` is True."""

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        """Actions (num_envs, action_dim) for the current observation batch."""


class ExpertAgent:
    """The task's scripted expert, with its noise knob."""

    def __init__(self, noise: float = 0.0) -> None:
        self.noise = float(noise)
        self.name = f"expert(noise={self.noise:g})"

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        envs.call("attach_expert", self.noise)

    def reset(self, env_mask: np.ndarray) -> None:
        """The expert restarts inside each env's own reset."""

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        return np.stack(envs.call("expert_action")).astype(np.float32)
