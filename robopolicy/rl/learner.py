"""SAC and TD3 updates on a critic ensemble, written out with the equations' names.

Both learners see transitions (s, a, R, s', discount) whose ``a`` is the action the critic
scores. A method may let the actor output something else and map it to the critic's action:
residual RL's actor outputs a correction ``r`` and the critic scores the executed action
``clip(a_base + r, -1, 1)`` (``critic_action``); plain RL uses the identity.

TD3 (Fujimoto et al. 2018, with an ensemble as in ResFiT/REDQ):
    a'  = clip(mu_targ(s') + clip(eps, -c, c)),   eps ~ N(0, sigma_targ)
    y   = R + discount * min_{i in random subset} Q_targ_i(s', a')
    L_Q = sum_i (Q_i(s, a) - y)^2;   L_mu = -mean_i Q_i(s, mu(s))   (every ``actor_delay``)
    optionally L_mu = -mean_i Q_i / mean|Q| + penalty * mean((mu(s) / scale)^2)
SAC (Haarnoja et al. 2018, auto-tuned temperature):
    a' ~ pi(s'),  y = R + discount * (min_subset Q_targ(s', a') - alpha log pi(a'|s'))
                  (without the alpha term when ``backup_entropy`` is off)
    L_pi = alpha log pi(a|s) - min_i Q_i(s, a)   (mean_i with ``actor_q: mean``)
    L_alpha = -alpha (log pi + H_target)
Both clip y to ``value_bounds`` when set. Targets follow by Polyak averaging with rate tau;
with ``actor_ema`` > 0 an averaged actor follows the actor the same way (rate actor_ema) and is
what evals run. ``scale_learning_rates`` sets the actor's and critics' rates to a factor of
their initial values (the decay schedule of ``robopolicy.rl.schedule``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from robopolicy.rl.agent_config import AgentConfig, validate_agent_config
from robopolicy.rl.networks import (
    CriticEnsemble,
    DeterministicActor,
    GaussianActor,
    min_of_random_subset,
)
from robopolicy.rl.replay import Batch
from robopolicy.training.state import load_optimizer_state, optimizer_state

CriticAction = Callable[[Tensor, Tensor], Tensor]


def identity_action(obs: Tensor, action: Tensor) -> Tensor:
    return action


class SavesTrainingState:
    """Saving and restoring a learner: weights, its update counter and every optimiser named by
    ``_optimizer_names`` (safetensors + JSON through the checkpoint module, no pickle)."""

    critic_updates: int

    def _optimizer_names(self) -> list[str]:
        raise NotImplementedError

    def training_state(self) -> dict:
        state: dict = {
            "learner": dict(self.state_dict()),
            "learner_counters": {"critic_updates": self.critic_updates},
        }
        for name in self._optimizer_names():
            tensors, groups = optimizer_state(getattr(self, name))
            state[f"{name}_state"] = tensors
            state[f"{name}_groups"] = groups
        return state

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["learner"], strict=True)
        self.critic_updates = int(state["learner_counters"]["critic_updates"])
        for name in self._optimizer_names():
            load_optimizer_state(
                getattr(self, name), state.get(f"{name}_state", {}), state[f"{name}_groups"]
            )


class Learner(SavesTrainingState, nn.Module):
    """Actor, critic ensemble, their targets and optimisers; ``update`` does one gradient step."""

    def __init__(
        self,
        cfg: AgentConfig,
        obs_dim: int,
        action_dim: int,
        critic_action_dim: int | None = None,
        critic_action: CriticAction = identity_action,
        target_noise_weights: Tensor | None = None,
    ) -> None:
        super().__init__()
        validate_agent_config(cfg)
        self.cfg = cfg
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.critic_action = critic_action
        # TD3: per-dim factors on the target smoothing, for dims that ``critic_action``
        # amplifies (a residual's gripper dims), so that smoothing stays as wide everywhere.
        self.target_noise_weights = target_noise_weights
        if cfg.algo == "sac":
            self.actor: nn.Module = GaussianActor(
                obs_dim,
                action_dim,
                cfg.hidden_dim,
                cfg.num_layers,
                cfg.action_scale,
                cfg.activation,
            )
            self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
            self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
            # the target is set in [-1, 1] action units (as SB3 and DSRL's reference); in the
            # actor's scaled units log-probs are d * ln(scale) nats lower, entropies that higher
            unit_target = cfg.target_entropy if cfg.target_entropy is not None else -action_dim
            self.target_entropy = unit_target + action_dim * math.log(cfg.action_scale)
        else:
            self.actor = DeterministicActor(
                obs_dim,
                action_dim,
                cfg.hidden_dim,
                cfg.num_layers,
                cfg.action_scale,
                cfg.zero_init_actor,
                cfg.activation,
            )
        self.critic = CriticEnsemble(
            obs_dim,
            critic_action_dim or action_dim,
            cfg.critic_heads,
            cfg.hidden_dim,
            cfg.num_layers,
            cfg.activation,
        )
        self.explore_noise: Tensor | None = None  # TD3's last exploration noise, per sub-env
        # TD3's target actor (SAC's targets sample the online actor: it needs none)
        self.actor_target = (
            copy.deepcopy(self.actor).requires_grad_(False) if cfg.algo == "td3" else None
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        # the averaged actor that evals run and checkpoints save as the policy (None: off)
        self.actor_ema = (
            copy.deepcopy(self.actor).requires_grad_(False) if cfg.actor_ema > 0 else None
        )
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.critic_updates = 0

    def policy_actor(self) -> nn.Module:
        """The actor that evals run and checkpoints keep: the averaged copy when on."""
        return self.actor_ema if self.actor_ema is not None else self.actor

    def scale_learning_rates(self, factor: float) -> None:
        """Actor and critic learning rates at ``factor`` times the configured ones."""
        for name, initial in self._decayed_rates().items():
            for group in getattr(self, name).param_groups:
                group["lr"] = initial * factor

    def _decayed_rates(self) -> dict[str, float]:
        """The optimisers the decay schedule moves, with their initial rates."""
        return {"actor_optim": self.cfg.actor_lr, "critic_optim": self.cfg.critic_lr}

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp().detach()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor, explore: bool) -> Tensor:
        """The actor's output for a batch of observations, with exploration noise if asked,
        on the device ``obs`` came from (the envs' side stays on the CPU)."""
        return self._act(obs.to(self.device), explore).to(obs.device)

    def _act(self, obs: Tensor, explore: bool) -> Tensor:
        if self.cfg.algo == "sac":
            return self.actor(obs, deterministic=not explore)[0]
        action = self.actor(obs)
        if explore:
            noise = torch.randn_like(action)
            rho = self.cfg.explore_correlation
            previous = self.explore_noise
            if rho > 0 and previous is not None and previous.shape == noise.shape:
                noise = rho * previous.to(noise) + math.sqrt(1 - rho**2) * noise
            self.explore_noise = noise
            action = action + self.cfg.explore_std * self.cfg.action_scale * noise
        return action.clamp(-self.cfg.action_scale, self.cfg.action_scale)

    def training_state(self) -> dict:
        state = super().training_state()
        if self.explore_noise is not None:
            state["explore_noise"] = {"noise": self.explore_noise}
        return state

    def load_training_state(self, state: dict) -> None:
        if self.actor_target is None:  # SAC runs saved before its target actor was dropped
            learner = state["learner"]
            state = {
                **state,
                "learner": {k: v for k, v in learner.items() if not k.startswith("actor_target.")},
            }
        super().load_training_state(state)
        if "explore_noise" in state:
            self.explore_noise = state["explore_noise"]["noise"]

    # ---- learning --------------------------------------------------------------------------
    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        """One critic step; an actor (and temperature) step when due and ``update_actor``."""
        metrics = self._update_critic(batch)
        self.critic_updates += 1
        due = self.cfg.algo == "sac" or self.critic_updates % self.cfg.actor_delay == 0
        if update_actor and due:
            metrics.update(self._update_actor(batch.obs))
            if self.actor_ema is not None:
                _polyak(self.actor, self.actor_ema, self.cfg.actor_ema)
        if due:  # TD3 moves its targets with the delayed actor, SAC after every step
            _polyak(self.critic, self.critic_target, self.cfg.tau)
            if self.actor_target is not None:
                _polyak(self.actor, self.actor_target, self.cfg.tau)
        return metrics

    def _update_critic(self, batch: Batch) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            if cfg.algo == "sac":
                next_action, next_log_prob = self.actor(batch.next_obs)
            else:
                smoothing = (
                    cfg.target_noise
                    * cfg.action_scale
                    * torch.randn(
                        batch.next_obs.shape[0], self.action_dim, device=batch.next_obs.device
                    )
                ).clamp(
                    -cfg.target_noise_clip * cfg.action_scale,
                    cfg.target_noise_clip * cfg.action_scale,
                )
                if self.target_noise_weights is not None:
                    smoothing = smoothing * self.target_noise_weights.to(smoothing)
                next_action = (self.actor_target(batch.next_obs) + smoothing).clamp(
                    -cfg.action_scale, cfg.action_scale
                )
            q_next = min_of_random_subset(
                self.critic_target(batch.next_obs, self.critic_action(batch.next_obs, next_action)),
                cfg.target_subset,
            )
            if cfg.algo == "sac" and cfg.backup_entropy:
                q_next = q_next - self.alpha * next_log_prob
        return regress_critic(self.critic, self.critic_optim, batch, q_next, cfg)

    def _update_actor(self, obs: Tensor) -> dict[str, float]:
        cfg = self.cfg
        if cfg.algo == "sac":
            action, log_prob = self.actor(obs)
            q = self._sac_actor_q(obs, action)
            loss = (self.alpha * log_prob - q).mean()
            if cfg.action_penalty > 0:  # the same pull toward zero, in units of mean |Q|
                # on the mean action: penalising samples would also shrink the spread that the
                # entropy target asks for
                mean_action = self.actor(obs, deterministic=True)[0]
                penalty = ((mean_action / cfg.action_scale) ** 2).mean()
                loss = loss + cfg.action_penalty * q.abs().mean().detach() * penalty
            _step(self.actor_optim, loss, self.actor, cfg.grad_clip)
            alpha_loss = -(self.log_alpha.exp() * (log_prob.detach() + self.target_entropy)).mean()
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()
            return {
                "actor_loss": loss.item(),
                "alpha": self.alpha.item(),
                "entropy": -log_prob.mean().item(),
            }
        action = self.actor(obs)
        q = self.critic(obs, self.critic_action(obs, action)).mean(dim=0)
        loss = -q.mean()
        if cfg.action_penalty > 0:  # scale-free Q term (as TD3+BC) plus a pull toward zero
            penalty = ((action / cfg.action_scale) ** 2).mean()
            loss = loss / q.abs().mean().detach().clamp_min(1e-6) + cfg.action_penalty * penalty
        _step(self.actor_optim, loss, self.actor, cfg.grad_clip)
        return {"actor_loss": loss.item(), "actor_action_rms": action.pow(2).mean().sqrt().item()}

    def _sac_actor_q(self, obs: Tensor, action: Tensor) -> Tensor:
        """The Q that SAC's actor maximises: the heads reduced by ``actor_q``."""
        return self._reduce_heads(self.critic(obs, self.critic_action(obs, action)))

    def _reduce_heads(self, q: Tensor) -> Tensor:
        return q.min(dim=0).values if self.cfg.actor_q == "min" else q.mean(dim=0)

    def _optimizer_names(self) -> list[str]:
        return ["actor_optim", "critic_optim"] + (["alpha_optim"] if self.cfg.algo == "sac" else [])


def regress_critic(
    critic: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    q_next: Tensor,
    cfg: AgentConfig,
) -> dict[str, float]:
    """The TD step every learner shares: the n-step target y = R + discount * q_next (clipped to
    ``cfg.value_bounds``), and each critic head regressed onto it."""
    with torch.no_grad():
        y = batch.returns + batch.discount * q_next
        if cfg.value_bounds is not None:
            y = y.clamp(*cfg.value_bounds)
    q = critic(batch.obs, batch.actions)
    loss = ((q - y) ** 2).mean(dim=1).sum()
    _step(optimizer, loss, critic, cfg.grad_clip)
    return {"critic_loss": loss.item() / cfg.critic_heads, "q_mean": q.mean().item()}


def _step(
    optimizer: torch.optim.Optimizer, loss: Tensor, module: nn.Module, grad_clip: float
) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()


@torch.no_grad()
def _polyak(source: nn.Module, target: nn.Module, tau: float) -> None:
    for p, p_targ in zip(source.parameters(), target.parameters(), strict=True):
        p_targ.lerp_(p, tau)
