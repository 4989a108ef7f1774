"""What each RL method looks like to the shared training loop: a batched MDP over the actor's
observations and actions, built on a vector env.

- ``FlatMDP``: the env's own observations (flattened) and actions: RL from scratch;
- ``ResidualMDP``: observations [base features, a_base], actions are residuals, one env step
  per MDP step (``robopolicy.rl.residual``);
- ``NoiseMDP``: actions are the base policy's initial noise, one executed chunk per MDP step
  (``robopolicy.rl.dsrl``).

``step`` returns the transition to store (with the critic's action, which may differ from the
actor's) and the state to act from next: for sub-envs whose episode ended, ``next_state`` is
the final state (a truncated episode bootstraps from it) and ``start_state`` the new
episode's first state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from robopolicy.rl.flat_obs import flatten_obs
from robopolicy.rl.residual import ResidualBase


@dataclass
class Step:
    critic_action: Tensor  # (N, critic action dim)
    reward: Tensor  # (N,)
    next_state: Tensor  # (N, obs_dim)
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    success: np.ndarray  # (N,) bool: the task succeeded during this step
    start_state: Tensor  # (N, obs_dim): where each sub-env acts from next
    env_steps: int  # env steps taken, summed over sub-envs


class MDP:
    """Shared bookkeeping: the vector env and the seeds of new episodes."""

    obs_dim: int
    action_dim: int  # the actor's
    critic_action_dim: int

    def __init__(self, envs: gym.vector.VectorEnv, seeds: Iterator[int]) -> None:
        self.envs = envs
        self.num_envs = envs.num_envs
        self.seeds = seeds
        self.episodes = 0

    def critic_action(self, state: Tensor, action: Tensor) -> Tensor:
        return action

    def env_action(self, critic_action: Tensor) -> Tensor:
        """What the env receives for the critic's action (the same, unless overridden)."""
        return critic_action

    def target_noise_weights(self) -> Tensor | None:
        """Per-dim factors on TD3's target smoothing (None: the same everywhere)."""
        return None

    def reset(self) -> Tensor:
        obs, _ = self.envs.reset(seed=[next(self.seeds) for _ in range(self.num_envs)])
        self.episodes += self.num_envs
        self._start_episodes(np.ones(self.num_envs, dtype=bool))
        self._state = self._observe(obs, range(self.num_envs))  # where step() acts from
        return self._state

    def _restart(self, ended: np.ndarray, next_state: Tensor) -> Tensor:
        """Reset the ended sub-envs; the state to act from next."""
        if not ended.any():
            return next_state
        seeds = [next(self.seeds) if e else None for e in ended]
        self.episodes += int(ended.sum())
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": ended.copy()})
        self._start_episodes(ended)
        start = next_state.clone()
        rows = np.flatnonzero(ended)
        start[torch.as_tensor(rows)] = self._observe(obs, rows)
        return start

    def _start_episodes(self, mask: np.ndarray) -> None:
        """New episodes begin in the sub-envs of ``mask`` (clear per-episode state)."""

    def _observe(self, obs, rows) -> Tensor:
        raise NotImplementedError

    def step(self, action: Tensor) -> Step:
        raise NotImplementedError


def _success(info: dict, n: int) -> np.ndarray:
    return np.asarray(info.get("is_success", np.zeros(n, dtype=bool)), dtype=bool)


class SingleStepMDP(MDP):
    """One env step per MDP step; subclasses map actor actions to env actions."""

    def step(self, action: Tensor) -> Step:
        executed = self.critic_action(self._state, action)
        obs, reward, terminated, truncated, info = self.envs.step(self.env_action(executed).numpy())
        next_state = self._observe(obs, range(self.num_envs))
        ended = terminated | truncated
        start = self._restart(ended, next_state)
        self._state = start
        return Step(
            executed,
            torch.as_tensor(reward, dtype=torch.float32),
            next_state,
            terminated,
            truncated,
            _success(info, self.num_envs),
            start,
            self.num_envs,
        )


class FlatMDP(SingleStepMDP):
    """The env's own observations, flattened (``obs_keys`` of a dict space, in the order given:
    ``robopolicy finetune`` sorts them)."""

    def __init__(self, envs, seeds, obs_keys: list[str] | None) -> None:
        super().__init__(envs, seeds)
        self.obs_keys = obs_keys
        space = envs.single_observation_space
        sample = space.sample()
        batch = {k: v[None] for k, v in sample.items()} if obs_keys is not None else sample[None]
        self.obs_dim = flatten_obs(batch, obs_keys).shape[1]
        self.action_dim = self.critic_action_dim = int(np.prod(envs.single_action_space.shape))

    def _observe(self, obs, rows) -> Tensor:
        return flatten_obs(obs, self.obs_keys)[list(rows)]


class ResidualMDP(SingleStepMDP):
    def __init__(self, envs, seeds, base: ResidualBase) -> None:
        super().__init__(envs, seeds)
        self.base = base
        self.obs_dim = base.obs_dim
        self.action_dim = self.critic_action_dim = base.action_dim

    def critic_action(self, state: Tensor, action: Tensor) -> Tensor:
        return self.base.executed_action(state, action)

    def env_action(self, critic_action: Tensor) -> Tensor:
        return self.base.env_action(critic_action)

    def target_noise_weights(self) -> Tensor | None:
        return self.base.target_noise_weights()

    def _start_episodes(self, mask: np.ndarray) -> None:
        self.base.reset(mask)

    def _observe(self, obs, rows) -> Tensor:
        return self.base.step(obs, list(rows)).cpu()


def seed_stream(first: int) -> Iterator[int]:
    seed = first
    while True:
        yield seed
        seed += 1
