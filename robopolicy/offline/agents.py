"""Offline RL agents on the shared off-policy core: TD3+BC and IQL.

Both standardise observations with the real dataset's statistics (TD3+BC does; it matters on
locomotion) and expose ``log_prob(obs, actions)``, the target-policy likelihood that policy
guidance differentiates.

TD3+BC (Fujimoto & Gu 2021): TD3's critic update (``Learner``: twin critics, target smoothing
with clipped noise, delayed actor) and the actor loss
    L_pi = -lambda Q_1(s, pi(s)) + (pi(s) - a)^2,   lambda = alpha / mean|Q_1(s, pi(s))|.
Its deterministic actor is read as N(pi(s), I) by guidance, as in the PGD reference.

IQL (Kostrikov et al. 2022): no action outside the data is ever queried.
    L_V = E[ |tau - 1(u < 0)| u^2 ],  u = min_i Q_targ_i(s, a) - V(s)      (expectile tau)
    L_Q = sum_i (Q_i(s, a) - r - gamma (1 - d) V(s'))^2
    L_pi = -E[ min(exp(beta (min_i Q_targ_i(s, a) - V(s))), 100) log pi(a | s) ]
with a Gaussian policy whose mean is tanh-bounded and whose log-std is state-independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.learner import Learner, SavesTrainingState, _polyak, _step
from robopolicy.rl.networks import LOG_STD_MIN, CriticEnsemble, mlp
from robopolicy.rl.replay import Batch

ALGOS = ("td3bc", "iql")
MAX_ADVANTAGE_WEIGHT = 100.0
LOG_2PI = math.log(2 * math.pi)


@dataclass
class OfflineAgentConfig:
    algo: str = "td3bc"  # td3bc | iql
    hidden_dim: int = 256
    num_layers: int = 2
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    td3bc_alpha: float = 2.5
    policy_noise: float = 0.2  # TD3+BC target smoothing std
    noise_clip: float = 0.5
    actor_delay: int = 2
    iql_expectile: float = 0.7
    iql_temperature: float = 3.0  # beta


def validate_offline_agent_config(cfg: OfflineAgentConfig) -> None:
    if cfg.algo not in ALGOS:
        raise ValueError(f"agent.algo {cfg.algo!r} not in {ALGOS}")
    if not 0 < cfg.iql_expectile < 1:
        raise ValueError(f"agent.iql_expectile must be in (0, 1), got {cfg.iql_expectile}")


class TD3BCLearner(Learner):
    """``Learner``'s TD3 critic update with TD3+BC's behaviour-cloning actor loss."""

    def __init__(self, cfg: OfflineAgentConfig, obs_dim: int, action_dim: int) -> None:
        core = AgentConfig(
            algo="td3",
            hidden_dim=cfg.hidden_dim,
            num_layers=cfg.num_layers,
            critic_heads=2,
            target_subset=2,
            actor_lr=cfg.lr,
            critic_lr=cfg.lr,
            tau=cfg.tau,
            gamma=cfg.gamma,
            n_step=1,
            batch_size=cfg.batch_size,
            grad_clip=0.0,
            actor_delay=cfg.actor_delay,
            target_noise=cfg.policy_noise,
            target_noise_clip=cfg.noise_clip,
            action_scale=1.0,
        )
        super().__init__(core, obs_dim, action_dim)
        self.alpha_bc = cfg.td3bc_alpha

    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        metrics = self._update_critic(batch)
        self.critic_updates += 1
        if self.critic_updates % self.cfg.actor_delay == 0:
            pi = self.actor(batch.obs)
            q = self.critic(batch.obs, pi)[0]
            lam = self.alpha_bc / q.abs().mean().detach()
            bc = ((pi - batch.actions) ** 2).mean()
            loss = -lam * q.mean() + bc
            _step(self.actor_optim, loss, self.actor, 0.0)
            _polyak(self.critic, self.critic_target, self.cfg.tau)
            _polyak(self.actor, self.actor_target, self.cfg.tau)
            metrics.update({"actor_loss": loss.item(), "bc_mse": bc.item()})
        return metrics

    def mean_action(self, obs: Tensor) -> Tensor:
        return self.actor(obs)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log N(a; pi(s), I): the deterministic actor as PGD's reference reads it."""
        diff = actions - self.actor(obs)
        return -0.5 * (diff**2).sum(-1) - 0.5 * diff.shape[-1] * LOG_2PI


class IQLLearner(SavesTrainingState, nn.Module):
    def __init__(self, cfg: OfflineAgentConfig, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.critic = CriticEnsemble(obs_dim, action_dim, 2, cfg.hidden_dim, cfg.num_layers)
        self.critic_target = CriticEnsemble(obs_dim, action_dim, 2, cfg.hidden_dim, cfg.num_layers)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.value = mlp(obs_dim, cfg.hidden_dim, cfg.num_layers, 1)
        self.actor = mlp(obs_dim, cfg.hidden_dim, cfg.num_layers, action_dim)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.value_optim = torch.optim.Adam(self.value.parameters(), lr=cfg.lr)
        self.actor_optim = torch.optim.Adam([*self.actor.parameters(), self.log_std], lr=cfg.lr)
        self.critic_updates = 0

    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            q_target = self.critic_target(batch.obs, batch.actions).min(dim=0).values
        # value: expectile regression toward the target Q of dataset actions
        u = q_target - self.value(batch.obs).squeeze(-1)
        weight = torch.where(u < 0, 1 - cfg.iql_expectile, cfg.iql_expectile)
        value_loss = (weight * u**2).mean()
        _step(self.value_optim, value_loss, self.value, 0.0)
        # critic: one-step TD toward V(s'), which never asks Q about unseen actions
        with torch.no_grad():
            y = batch.returns + batch.discount * self.value(batch.next_obs).squeeze(-1)
            advantage = q_target - self.value(batch.obs).squeeze(-1)
        q = self.critic(batch.obs, batch.actions)
        critic_loss = ((q - y) ** 2).mean(dim=1).sum()
        _step(self.critic_optim, critic_loss, self.critic, 0.0)
        # actor: advantage-weighted regression
        weights = (cfg.iql_temperature * advantage).exp().clamp(max=MAX_ADVANTAGE_WEIGHT)
        actor_loss = -(weights * self.log_prob(batch.obs, batch.actions)).mean()
        _step(self.actor_optim, actor_loss, self.actor, 0.0)
        _polyak(self.critic, self.critic_target, cfg.tau)
        self.critic_updates += 1
        return {
            "value_loss": value_loss.item(),
            "critic_loss": critic_loss.item() / 2,
            "actor_loss": actor_loss.item(),
            "q_mean": q.mean().item(),
        }

    def mean_action(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.actor(obs))

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        log_std = self.log_std.clamp(LOG_STD_MIN, 2.0)
        z = (actions - self.mean_action(obs)) / log_std.exp()
        return (-0.5 * z**2 - log_std - 0.5 * LOG_2PI).sum(-1)

    def _optimizer_names(self) -> list[str]:
        return ["actor_optim", "critic_optim", "value_optim"]


class OfflineAgent(nn.Module):
    """A TD3+BC or IQL learner behind a fixed observation standardisation.

    Everything outside sees raw observations: batches, acting, and the log-likelihood that
    guides the trajectory model.
    """

    def __init__(
        self,
        cfg: OfflineAgentConfig,
        obs_dim: int,
        action_dim: int,
        obs_mean: Tensor | None = None,
        obs_std: Tensor | None = None,
    ) -> None:
        super().__init__()
        validate_offline_agent_config(cfg)
        self.cfg = cfg
        self.action_dim = action_dim
        self.register_buffer("obs_mean", torch.zeros(obs_dim) if obs_mean is None else obs_mean)
        self.register_buffer("obs_std", torch.ones(obs_dim) if obs_std is None else obs_std)
        learner_cls = TD3BCLearner if cfg.algo == "td3bc" else IQLLearner
        self.learner = learner_cls(cfg, obs_dim, action_dim)

    def _norm(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def update(self, batch: Batch) -> dict[str, float]:
        normalized = Batch(
            self._norm(batch.obs),
            batch.actions,
            batch.returns,
            self._norm(batch.next_obs),
            batch.discount,
        )
        return self.learner.update(normalized)

    @torch.no_grad()
    def forward(self, obs: Tensor) -> Tensor:
        """The deterministic action for raw observations (what eval runs)."""
        return self.learner.mean_action(self._norm(obs)).clamp(-1, 1)

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        return self.learner.log_prob(self._norm(obs), actions)

    def policy_modules(self) -> dict[str, Tensor]:
        """The weights that acting needs (saved as the checkpoint's model)."""
        return {k: v for k, v in self.state_dict().items() if "target" not in k}


def load_offline_agent(path, config: dict | None = None) -> OfflineAgent:
    """A ``robopolicy offline`` checkpoint -> the agent in eval mode (targets not saved)."""
    from robopolicy.checkpoint import CheckpointError, load_state, read_config, resolve_checkpoint

    path = resolve_checkpoint(path)
    config = config or read_config(path)
    if "offline_agent" not in config:
        raise CheckpointError(f"{path} is not a `robopolicy offline` checkpoint")
    dims = config["offline_agent"]
    agent = OfflineAgent(
        OfflineAgentConfig(**config["offline"]["agent"]), dims["obs_dim"], dims["action_dim"]
    )
    state = load_state(path, "model")
    expected = agent.policy_modules()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}/model.safetensors does not match the agent: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    agent.load_state_dict(state, strict=False)  # only the target networks are absent
    return agent.eval()
