"""DSRL (Wagenmaker et al. 2025): steer a frozen diffusion or flow policy by choosing its noise.

One agent step is one executed chunk::

    state     s = encoder features of the base's observation history
    action    w in [-m, m]^(H x A): the sampler's initial noise (tanh-bounded actor); with
              ``dsrl_noise: executed`` only the executed steps' rows, the others zero
    decode    chunk = pi_dp(s, w): DDIM with eta 0 (or the flow ODE), so deterministic in w,
              denoised exactly once per agent step
    execute   the chunk's first ``action_horizon`` actions, one env step each, stopping early
              if the episode ends; the reward is the sum over the executed steps
    reward    with ``dsrl_reward: per_env_step`` (the reference's): sum_k (r_k - 1) over the
              executed steps k, in [-action_horizon, 0] for sparse r; a chunk whose episode
              succeeds at its step j (and so ends there) gets -(j - 1). ``per_chunk``: the
              sum of r_k, minus 1 once

DSRL-SAC is plain SAC on (s, w). DSRL-NA (noise aliasing) learns Q^A over executed chunks by
TD, distils Q^W(s, w) from it with fresh noise, and trains the noise actor on Q^W::

    Q^A:   y = R + discount * (min_subset Q^A_targ(s', pi_dp(s', w')) - alpha log pi(w'|s')),
           w' ~ pi(.|s')   (the alpha term only with agent.backup_entropy: off in the configs)
    Q^W:   w ~ N(0, I) clipped to [-m, m];  L = 1/2 sum_i (Q^W_i(s, w) - sg Q^A_i(s, pi_dp(s, w)))^2
    actor: L = alpha log pi(w|s) - min_i Q^W_i(s, w),  w ~ pi(.|s)  (bounded by m like the data)

Avoided on purpose (bugs of the reference code, see ANCHORS.md): the noise is denoised once per
step, distillation noise honours the bound m, and env steps count every executed action.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from robopolicy.inference.cuda_graph import CudaGraphed
from robopolicy.inference.executor import threshold_discrete
from robopolicy.inference.history import ObservationHistories, obs_tensor
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.config import NOISE_SPANS
from robopolicy.rl.learner import Learner, _step
from robopolicy.rl.mdp import MDP, Step
from robopolicy.rl.networks import CriticEnsemble
from robopolicy.rl.replay import Batch


def noise_dim(policy, span: str) -> int:
    """The agent's action size: noise for every predicted step (``chunk``), or only for the
    steps that are executed (``executed``)."""
    if span not in NOISE_SPANS:
        raise ValueError(f"dsrl_noise {span!r} not in {NOISE_SPANS}")
    steps = policy.pred_horizon if span == "chunk" else policy.action_horizon
    return steps * policy.action_dim


class NoiseBase:
    """The frozen policy, driven by chosen noise, for ``num_envs`` independent episodes.

    ``noise_span``: the agent chooses the noise of the whole predicted chunk (H x A, DSRL's
    choice), or only of the executed steps, the rest held at zero (its mean). The second is for
    bases that predict more steps than they execute: the others' noise barely moves the executed
    actions (on the scarce PickPlace base resampling it moves them 0.15 RMS, against 0.75 for
    the executed steps' noise) yet doubles what the critic must learn to ignore. It explores
    worse, though: with the rest at zero that base rarely releases the cube, and one of two
    DSRL-SAC seeds never found the release (2%), so the configs keep ``chunk``."""

    def __init__(
        self,
        policy,
        num_envs: int,
        discrete_dims: Sequence[int] = (),
        noise_span: str = "chunk",
    ) -> None:
        if policy.cfg.type == "diffusion" and policy.cfg.sampler != "ddim":
            policy.set_sampler("ddim")  # DDPM would add fresh noise: not a function of w
        self.policy = policy.eval().requires_grad_(False)
        self.discrete_dims = tuple(discrete_dims)
        self.histories = ObservationHistories(policy.obs_horizon, num_envs)
        self.noise_shape = (policy.pred_horizon, policy.action_dim)
        self.noise_dim = noise_dim(policy, noise_span)
        self.noise_span = noise_span
        self.first = policy.obs_horizon - 1  # the chunk index aligned with the newest obs
        self.action_horizon = policy.action_horizon
        self.chunk_dim = policy.action_horizon * policy.action_dim
        self.feature_dim = policy.obs_encoder.out_dim
        # the frozen base's sampler as one CUDA graph per batch size (on a GPU, launches and
        # not arithmetic set the cost of a decode); eager on the CPU
        self._chunk_from_features = CudaGraphed(
            policy.chunk_from_features,
            context=lambda: (
                policy.cfg.sampler,
                policy.cfg.integrator,
                policy.num_inference_steps,
                policy.training,
            ),
        )

    def reset(self, mask: np.ndarray | None = None) -> None:
        for i in range(len(self.histories)):
            if mask is None or mask[i]:
                self.histories.clear(i)

    def push(self, obs: dict[str, np.ndarray], rows: Sequence[int]) -> None:
        """Append each row's observation (from a batch) to its history."""
        for i in rows:
            self.push_row(i, {k: obs[k][i] for k in self.policy.shapes.obs})

    def push_row(self, i: int, obs: dict[str, np.ndarray]) -> None:
        """Append one sub-env's observation; a new episode's fills its whole history."""
        self.histories.push(i, {k: obs_tensor(obs[k]) for k in self.policy.shapes.obs})

    @torch.no_grad()
    def features(self, rows: Sequence[int]) -> Tensor:
        """The encoded histories of ``rows``, on the policy's device."""
        device = self.policy.device
        stacked = self.histories.stacked(list(rows))
        return self.policy.encode_obs({k: v.to(device) for k, v in stacked.items()})

    @torch.no_grad()
    def decode(self, features: Tensor, noise: Tensor) -> Tensor:
        """pi_dp(s, w): the executed part of the chunk, (B, action_horizon * A), gripper
        commands thresholded to +-1 as executed; on the policy's device."""
        device = self.policy.device
        noise = self.full_noise(noise.to(device))
        chunk = self._chunk_from_features(features.to(device), noise)
        executed = chunk[:, self.first : self.first + self.action_horizon]
        return threshold_discrete(executed, self.discrete_dims).flatten(1)

    def full_noise(self, noise: Tensor) -> Tensor:
        """The agent's noise (B, noise_dim) as the sampler's (B, H, A) initial noise."""
        if self.noise_span == "chunk":
            return noise.reshape(-1, *self.noise_shape)
        full = noise.new_zeros(noise.shape[0], *self.noise_shape)
        steps = slice(self.first, self.first + self.action_horizon)
        full[:, steps] = noise.reshape(noise.shape[0], self.action_horizon, -1)
        return full


class NoiseMDP(MDP):
    """Agent actions are noises; one MDP step executes one chunk in each sub-env.

    Sub-envs are stepped one by one (a synchronous vector env), so an episode that ends inside
    a chunk ends that sub-env's MDP step without cutting the others' chunks.
    """

    def __init__(
        self, envs: gym.vector.SyncVectorEnv, seeds, base: NoiseBase, chunk_critic: bool
    ) -> None:
        super().__init__(envs, seeds)
        if not hasattr(envs, "envs"):
            raise TypeError("NoiseMDP steps sub-envs one by one: it needs a SyncVectorEnv")
        self.base = base
        self.obs_dim = base.feature_dim
        self.action_dim = base.noise_dim
        self.chunk_critic = chunk_critic  # DSRL-NA: the critic scores executed chunks
        self.critic_action_dim = base.chunk_dim if chunk_critic else base.noise_dim

    def critic_action(self, state: Tensor, action: Tensor) -> Tensor:
        return self.base.decode(state, action) if self.chunk_critic else action

    def _start_episodes(self, mask: np.ndarray) -> None:
        self.base.reset(mask)

    def _observe(self, obs, rows) -> Tensor:
        rows = list(rows)
        self.base.push(obs, rows)
        return self.base.features(rows).cpu()

    def _replayed(self, obs, rows: np.ndarray) -> None:
        self.base.push(obs, np.flatnonzero(rows))

    def step(self, action: Tensor) -> Step:
        n, horizon, dim = self.num_envs, self.base.action_horizon, self.base.policy.action_dim
        chunks = self.base.decode(self._state, action).cpu()  # denoised once per agent step
        reward = torch.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        success = np.zeros(n, dtype=bool)
        executed = torch.zeros(n, dtype=torch.long)
        for i, env in enumerate(self.envs.envs):
            for k in range(horizon):
                a = chunks[i, k * dim : (k + 1) * dim].numpy()
                self._record(i, a)
                obs, r, term, trunc, info = env.step(a)
                executed[i] += 1
                reward[i] += float(r)
                success[i] |= bool(info.get("is_success", False))
                self.base.push_row(i, obs)
                if term or trunc:
                    terminated[i], truncated[i] = bool(term), bool(trunc) and not term
                    break
        next_state = self.base.features(range(n)).cpu()
        start = self._restart(terminated | truncated, next_state)
        self._state = start
        critic_action = chunks if self.chunk_critic else action
        return Step(
            critic_action,
            reward,
            next_state,
            terminated,
            truncated,
            success,
            start,
            int(executed.sum()),
            executed,
        )


class NoiseAliasingLearner(Learner):
    """DSRL-NA: the ``Learner``'s SAC critic is Q^A over executed chunks (its
    ``critic_action`` decodes noise into chunks); the actor learns from a distilled Q^W."""

    def __init__(self, cfg: AgentConfig, obs_dim: int, noise_dim: int, chunk_dim: int, decode):
        if cfg.algo != "sac":
            raise ValueError(f"DSRL-NA is built on SAC; agent.algo is {cfg.algo!r}")
        super().__init__(cfg, obs_dim, noise_dim, critic_action_dim=chunk_dim, critic_action=decode)
        self.noise_critic = CriticEnsemble(
            obs_dim, noise_dim, cfg.critic_heads, cfg.hidden_dim, cfg.num_layers, cfg.activation
        )
        self.noise_critic_optim = torch.optim.Adam(self.noise_critic.parameters(), lr=cfg.critic_lr)

    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        metrics = super().update(batch, update_actor)  # Q^A by TD; the actor on Q^W
        metrics.update(self.distill(batch.obs))
        return metrics

    def distill(self, obs: Tensor) -> dict[str, float]:
        """Q^W_i(s, w) -> Q^A_i(s, pi_dp(s, w)) head to head, w ~ N(0, I) within [-m, m]."""
        m = self.cfg.action_scale
        noise = torch.randn(obs.shape[0], self.action_dim, device=obs.device).clamp(-m, m)
        with torch.no_grad():
            target = self.critic(obs, self.critic_action(obs, noise))
        loss = 0.5 * ((self.noise_critic(obs, noise) - target) ** 2).mean(dim=1).sum()
        _step(self.noise_critic_optim, loss, self.noise_critic, self.cfg.grad_clip)
        return {"distill_loss": loss.item() / self.cfg.critic_heads}

    def _sac_actor_q(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The noise actor learns from the distilled Q^W, not through the decoder."""
        return self._reduce_heads(self.noise_critic(obs, noise))

    def _optimizer_names(self) -> list[str]:
        return [*super()._optimizer_names(), "noise_critic_optim"]

    def _decayed_rates(self) -> dict[str, float]:
        return {**super()._decayed_rates(), "noise_critic_optim": self.cfg.critic_lr}


class NoiseAgent:
    """A trained noise actor plus its frozen base as a rollout agent (eval, serving): each
    sub-env plans a chunk from noise the actor chooses and executes it step by step.

    ``sample_noise``: draw the noise from the actor's distribution (DSRL reshapes the
    distribution the base samples from; the reference evaluates that way by default) or take
    its mean (a deterministic policy; on a base whose zero-noise chunk is a poor mode, such
    as the scarce PickPlace policy's that never releases, the mean inherits it)."""

    def __init__(
        self,
        policy,
        actor: torch.nn.Module,
        name: str = "dsrl",
        sample_noise: bool = True,
        noise_span: str = "chunk",
    ) -> None:
        self.policy = policy
        self.actor = actor.eval()
        self.name = name
        self.sample_noise = sample_noise
        self.noise_span = noise_span
        self.base: NoiseBase | None = None
        self.queues: list[deque] = []

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        self.setup(envs.num_envs, envs.get_attr("discrete_action_dims")[0])

    def setup(self, num_envs: int, discrete_dims) -> None:
        self.base = NoiseBase(self.policy, num_envs, discrete_dims, self.noise_span)
        self.queues = [deque() for _ in range(num_envs)]

    def session(self) -> NoiseAgent:
        """A new agent with its own episode state, sharing the (frozen) networks."""
        return NoiseAgent(self.policy, self.actor, self.name, self.sample_noise, self.noise_span)

    def reset(self, env_mask: np.ndarray) -> None:
        self.base.reset(env_mask)
        for i in np.flatnonzero(env_mask):
            self.queues[i].clear()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        self.base.push(obs, range(len(self.queues)))
        empty = [i for i, queue in enumerate(self.queues) if not queue]
        if empty:
            features = self.base.features(empty)
            noise = self.actor(features, deterministic=not self.sample_noise)[0]
            chunks = self.base.decode(features, noise).cpu()
            chunks = chunks.reshape(len(empty), -1, self.policy.action_dim)
            for row, i in enumerate(empty):
                self.queues[i].extend(chunks[row])
        return torch.stack([queue.popleft() for queue in self.queues]).numpy()

    def metrics(self) -> dict[str, float]:
        return {}
