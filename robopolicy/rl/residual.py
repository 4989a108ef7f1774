"""Residual RL (ResFiT): a small actor learns per-step corrections on top of a frozen BC policy.

At every control step of every sub-env::

    base chunk   the frozen policy plans a chunk and executes it step by step (its own queue,
                 reset at every episode start): a_base
    actor input  s = [encoder features of the base's observation history, a_base]
    residual     r = scale * tanh(mu(s)) (+ exploration noise), last layer zero-initialised
    executed     a = clip(a_base + r, -1, 1)          <- what the env and the critic see
                 (the open/close dims keep the base's +-1 command)
    gripper      with gripper_gain g > 0, the open/close dims get a_base + g * r / scale
                 instead: the critic sees that value, the env its sign, so the residual can
                 open or close the gripper where the base would not (|r| > scale / g flips it)
                 with a gripper critic (``residual_gripper_by_critic``), the critic chooses the
                 open/close dims instead: argmax over {-1, +1} of its mean Q, the arm dims as
                 above (a hybrid discrete-continuous action, as in P-DQN); the deterministic
                 actor's gradient cannot see the step in Q that a thresholded command makes

The base is never trained; its encoder is the actor's and critic's feature extractor (images
included), so no second encoder learns. Demonstrations enter the replay with the base action
relabelled: the base is replayed along each demo (chunks planned from the demo's observations,
as it would have planned them), and the critic scores the demonstrator's executed action.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from robopolicy.inference.chunking import ChunkExecutor
from robopolicy.inference.executor import threshold_discrete
from robopolicy.inference.history import obs_tensor
from robopolicy.rl.replay import ReplayBuffer


class ResidualBase:
    """The frozen base policy for ``num_envs`` independent episodes: base actions and features.

    One chunk executor per sub-env, so any subset of episodes can start, step or end on its own.
    """

    def __init__(
        self,
        policy,
        num_envs: int,
        discrete_dims: Sequence[int] = (),
        gripper_gain: float = 0.0,
        action_scale: float = 1.0,
        gripper_critic: nn.Module | None = None,
    ) -> None:
        self.policy = policy.eval().requires_grad_(False)
        self.discrete_dims = tuple(discrete_dims)
        # Residual units -> open/close command units (0: the base keeps the gripper).
        self.discrete_gain = gripper_gain / action_scale
        if gripper_critic is not None and self.discrete_gain != 0:
            raise ValueError("a gripper critic and a gripper gain both claim the gripper")
        # Q(s, a) -> (heads, B) that picks the open/close commands (None: see the gain).
        self.gripper_critic = gripper_critic
        # every +-1 pattern of the open/close dims, (2^k, k)
        self.discrete_patterns = torch.tensor(
            list(itertools.product((-1.0, 1.0), repeat=len(self.discrete_dims)))
        )
        self.executors = [ChunkExecutor(policy, 1, self.discrete_dims) for _ in range(num_envs)]
        self.action_dim = policy.action_dim
        self.is_discrete = torch.zeros(self.action_dim, dtype=torch.bool)  # (A,) open/close dims
        self.is_discrete[list(self.discrete_dims)] = True
        self.feature_dim = policy.obs_encoder.out_dim
        self.obs_dim = self.feature_dim + self.action_dim  # the actor's input size

    def reset(self, mask: np.ndarray | None = None) -> None:
        for i, executor in enumerate(self.executors):
            if mask is None or mask[i]:
                executor.reset()

    @torch.no_grad()
    def step(self, obs: dict[str, np.ndarray], rows: Sequence[int] | None = None) -> Tensor:
        """Advance the base in ``rows`` (all by default) by one observation; return the actor's
        input [features, a_base] for those rows, (len(rows), obs_dim), on the policy's device."""
        rows = range(len(self.executors)) if rows is None else rows
        actions, histories = [], []
        for i in rows:
            executor = self.executors[i]
            actions.append(executor.act(self._current(obs, i))[0])
            histories.append(executor.histories.stacked([0]))
        batch = {k: torch.cat([h[k] for h in histories]) for k in histories[0]}
        features = self.policy.encode_obs(batch)
        return torch.cat([features, torch.stack(actions)], dim=-1)

    def _current(self, obs: dict[str, np.ndarray], i: int) -> dict[str, Tensor]:
        """Sub-env ``i``'s observation as its executor takes it: (1, ...) on the device."""
        device = self.policy.device
        return {k: obs_tensor(obs[k][i : i + 1]).to(device) for k in self.policy.shapes.obs}

    def push_history(self, obs: dict[str, np.ndarray], rows: Sequence[int]) -> None:
        """Append observations to the histories of ``rows`` without planning (a resume replays
        the episodes; the planned actions come back with ``load_queue_state``)."""
        for i in rows:
            self.executors[i].histories.push(0, {k: v[0] for k, v in self._current(obs, i).items()})

    def queue_state(self) -> dict[str, Tensor]:
        """The actions each sub-env's base has planned and not executed yet, (n, A) per env."""
        empty = torch.zeros(0, self.action_dim)
        return {
            f"base_queue.{i}": torch.stack(list(e.queues[0])).cpu() if e.queues[0] else empty
            for i, e in enumerate(self.executors)
        }

    def load_queue_state(self, tensors: dict[str, Tensor]) -> None:
        device = self.policy.device
        for i, executor in enumerate(self.executors):
            executor.queues[0].clear()
            executor.queues[0].extend(tensors[f"base_queue.{i}"].to(device))

    def base_action(self, actor_obs: Tensor) -> Tensor:
        return actor_obs[..., -self.action_dim :]

    def executed_action(self, actor_obs: Tensor, residual: Tensor) -> Tensor:
        """clip(a_base + r, -1, 1): the critic's action; ``env_action`` of it is executed.

        The env reads the gripper dimension as a finger position, so an unthresholded residual
        would hold the cube with a slightly open hand. Without a gripper gain the open/close
        dims are the base's +-1 commands, whatever the residual there (or the gripper critic's
        choice, once it has one); with a gain they stay continuous, a_base + gain * r / scale,
        so that the critic's gradient can reach the decision to open or close.
        """
        base = self.base_action(actor_obs)
        executed = base + residual
        if self.discrete_gain == 0:
            executed = torch.where(
                self.is_discrete.to(executed.device),
                threshold_discrete(base, self.discrete_dims),
                executed.clamp(-1.0, 1.0),
            )
            if self.gripper_critic is not None and self.discrete_dims:
                executed = self.best_discrete(actor_obs, executed)
            return executed
        dims = list(self.discrete_dims)
        executed[..., dims] = base[..., dims] + self.discrete_gain * residual[..., dims]
        return executed.clamp(-1.0, 1.0)

    def best_discrete(self, actor_obs: Tensor, action: Tensor) -> Tensor:
        """``action`` (B, A) with its open/close dims set to the +-1 pattern that the gripper
        critic's mean Q ranks first; gradients still flow through the other dims (the actor's
        loss). In TD targets this is the online critic choosing and the target critic scoring
        the choice (as Double DQN does), which keeps the max from feeding on its own noise."""
        if action.ndim != 2 or actor_obs.shape[0] != action.shape[0]:
            raise ValueError(
                f"best_discrete takes (B, A) actions and (B, obs) states, got "
                f"{tuple(action.shape)} and {tuple(actor_obs.shape)}"
            )
        dims = list(self.discrete_dims)
        patterns = self.discrete_patterns.to(action)
        n_patterns, batch = len(patterns), action.shape[0]
        with torch.no_grad():
            candidates = action.detach().unsqueeze(0).repeat(n_patterns, 1, 1)
            candidates[..., dims] = patterns[:, None, :]
            weight = next(self.gripper_critic.parameters(), None)
            device = weight.device if weight is not None else actor_obs.device
            q = self.gripper_critic(
                actor_obs.repeat(n_patterns, 1).to(device),
                candidates.reshape(n_patterns * batch, -1).to(device),
            )
            best = q.mean(dim=0).view(n_patterns, batch).argmax(dim=0).to(action.device)
        chosen = action.clone()
        chosen[..., dims] = patterns[best]
        return chosen

    def target_noise_weights(self) -> Tensor | None:
        """Per-dim factors that undo the gripper gain (TD3's target smoothing uses them: the
        gripper's smoothed value then spreads as far as an arm dim's, instead of g / scale
        times as far, which would flip held grippers in the targets)."""
        if self.discrete_gain == 0 or not self.discrete_dims:
            return None
        weights = torch.ones(self.action_dim)
        weights[list(self.discrete_dims)] = 1.0 / self.discrete_gain
        return weights

    def env_action(self, executed: Tensor) -> Tensor:
        """What the env receives for the critic's action: open/close dims as +-1."""
        return threshold_discrete(executed, self.discrete_dims)


@torch.no_grad()
def demo_buffer(
    policy,
    episodes,
    discrete_dims: Sequence[int],
    capacity: int | None = None,
    reward_offset: float = 0.0,
) -> ReplayBuffer:
    """Demonstrations as transitions (s, a_demo, r, s') with s = [features, relabelled a_base].

    An episode whose last step is done (success) is terminal; otherwise it was cut short and
    bootstraps. Rewards are the dataset's (sparse: 1 on success) plus ``reward_offset``, the
    shift the online rewards get, so that both halves of a batch share one reward scale.
    """
    base = ResidualBase(policy, 1, discrete_dims)
    total = sum(len(e.actions) for e in episodes)
    buffer = ReplayBuffer(base.obs_dim, base.action_dim, capacity or max(total, 1), 1)
    for episode in episodes:
        base.reset()
        steps = len(episode.actions)
        obs_rows = [
            base.step({k: v[t : t + 1] for k, v in episode.obs.items()}) for t in range(steps)
        ]
        final = base.step({k: v[-1:] for k, v in episode.next_obs.items()})
        states = torch.cat([*obs_rows, final]).cpu()
        buffer.add_episode(
            states[:-1],
            torch.as_tensor(episode.actions, dtype=torch.float32),
            torch.as_tensor(episode.rewards, dtype=torch.float32) + reward_offset,
            states[1:],
            terminated=bool(episode.dones[-1]),
        )
    return buffer
