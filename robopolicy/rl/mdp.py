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

For an exact resume an MDP records, per sub-env, the seed of its running episode and the env
actions taken since; ``restore`` replays them (the envs are deterministic given both) instead of
saving simulator internals, and puts back what replay cannot recompute without drawing random
numbers (the state to act from; the residual base's planned actions).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    # (N,): env steps each sub-env executed in this step (DSRL: up to a chunk's length, fewer
    # where its episode ended inside the chunk); None: one each
    executed: Tensor | None = None

    def executed_steps(self) -> Tensor:
        """Env steps per sub-env in this step, as floats (1 for single-step MDPs)."""
        if self.executed is None:
            return torch.ones(self.reward.shape[0])
        return self.executed.float()


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
        # each sub-env's running episode: its reset seed and the env actions taken since
        self.episode_seeds: list[int] = [0] * self.num_envs
        self.episode_actions: list[list[np.ndarray]] = [[] for _ in range(self.num_envs)]

    def critic_action(self, state: Tensor, action: Tensor) -> Tensor:
        return action

    def env_action(self, critic_action: Tensor) -> Tensor:
        """What the env receives for the critic's action (the same, unless overridden)."""
        return critic_action

    def target_noise_weights(self) -> Tensor | None:
        """Per-dim factors on TD3's target smoothing (None: the same everywhere)."""
        return None

    def reset(self) -> Tensor:
        self.episode_seeds = [next(self.seeds) for _ in range(self.num_envs)]
        self.episode_actions = [[] for _ in range(self.num_envs)]
        obs, _ = self.envs.reset(seed=list(self.episode_seeds))
        self.episodes += self.num_envs
        self._start_episodes(np.ones(self.num_envs, dtype=bool))
        self._state = self._observe(obs, range(self.num_envs))  # where step() acts from
        return self._state

    def _restart(self, ended: np.ndarray, next_state: Tensor) -> Tensor:
        """Reset the ended sub-envs; the state to act from next."""
        if not ended.any():
            return next_state
        self._episodes_ended(ended)
        seeds = [next(self.seeds) if e else None for e in ended]
        for i in np.flatnonzero(ended):
            self.episode_seeds[i], self.episode_actions[i] = seeds[i], []
        self.episodes += int(ended.sum())
        obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": ended.copy()})
        self._start_episodes(ended)
        start = next_state.clone()
        rows = np.flatnonzero(ended)
        start[torch.as_tensor(rows)] = self._observe(obs, rows)
        return start

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(tensors, plain values): what ``restore`` needs to go on with the running episodes."""
        tensors = {"start_state": self._state.clone()}
        width = int(np.prod(self.envs.single_action_space.shape))
        for i, actions in enumerate(self.episode_actions):
            taken = np.asarray(actions, dtype=np.float32).reshape(len(actions), width)
            tensors[f"actions.{i}"] = torch.from_numpy(taken)
        return tensors, {"episode_seeds": list(self.episode_seeds)}

    def restore(self, tensors: dict[str, Tensor], plain: dict[str, Any]) -> Tensor:
        """Put every sub-env back in the episode it was running at ``state_dict``, by resetting
        it with that episode's seed and replaying its actions; return the state to act from.

        The vector env steps all sub-envs at once, so episodes of different lengths are
        replayed aligned on their ends: a sub-env with a shorter episode steps a placeholder
        action until its own seeded reset, where its real episode begins."""
        seeds = [int(s) for s in plain["episode_seeds"]]
        shape = self.envs.single_action_space.shape
        actions = [tensors[f"actions.{i}"].numpy().reshape(-1, *shape) for i in range(len(seeds))]
        longest = max(len(a) for a in actions)
        begins = np.array([longest - len(a) for a in actions])  # the tick each episode starts
        space = self.envs.single_action_space
        idle = np.clip(np.zeros(shape, dtype=np.float32), space.low, space.high)
        obs, _ = self.envs.reset(seed=seeds)
        self._start_episodes(np.ones(self.num_envs, dtype=bool))
        self._replayed(obs, begins == 0)
        for tick in range(longest):
            live = begins <= tick
            step = [
                a[tick - b] if on else idle for a, b, on in zip(actions, begins, live, strict=True)
            ]
            obs, *_ = self.envs.step(np.stack(step))
            self._replayed(obs, live)
            starting = begins == tick + 1
            if starting.any():
                start_seeds = [s if on else None for s, on in zip(seeds, starting, strict=True)]
                obs, _ = self.envs.reset(seed=start_seeds, options={"reset_mask": starting})
                self._start_episodes(starting)
                self._replayed(obs, starting)
        self.episode_seeds = seeds
        self.episode_actions = [list(a) for a in actions]
        self._state = tensors["start_state"].clone()
        return self._state

    def _replayed(self, obs, rows: np.ndarray) -> None:
        """A replayed observation of the sub-envs in ``rows``: rebuild per-episode state that
        follows from observations alone (the bases' observation histories)."""

    def _record(self, i: int, env_action: np.ndarray) -> None:
        self.episode_actions[i].append(np.array(env_action, dtype=np.float32))

    def _episodes_ended(self, ended: np.ndarray) -> None:
        """The episodes of the sub-envs in ``ended`` are over (their seeds and actions are
        still recorded): EXPO keeps them for its base's imitation."""

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
        env_actions = self.env_action(executed).numpy()
        for i in range(self.num_envs):
            self._record(i, env_actions[i])
        obs, reward, terminated, truncated, info = self.envs.step(env_actions)
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

    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, plain = super().state_dict()
        return {**tensors, **self.base.queue_state()}, plain

    def restore(self, tensors: dict[str, Tensor], plain: dict[str, Any]) -> Tensor:
        state = super().restore(tensors, plain)
        self.base.load_queue_state(tensors)  # planned with random draws: put back, not replayed
        return state

    def _replayed(self, obs, rows: np.ndarray) -> None:
        self.base.push_history(obs, np.flatnonzero(rows))


def seed_stream(first: int) -> Iterator[int]:
    seed = first
    while True:
        yield seed
        seed += 1
