"""Settings of the off-policy learners (SAC and TD3), shared by every RL method."""

from __future__ import annotations

from dataclasses import dataclass

from robopolicy.rl.schedule import LR_DECAYS


@dataclass
class AgentConfig:
    algo: str = "td3"  # td3 | sac
    hidden_dim: int = 256  # ANCHORS: 1024 (ResFiT), 2048 (DSRL) on GPUs
    num_layers: int = 2
    activation: str = "relu"  # hidden layers of actor and critic: relu | tanh (DSRL's reference)
    critic_heads: int = 10  # ResFiT: 10; SAC/DSRL: 2
    target_subset: int = 2  # min over this many heads drawn at random for the target
    # SAC: the heads' Q the actor maximises: min (SAC's clipped double Q, pessimistic where the
    # heads disagree, i.e. where data is thin) or mean (REDQ's; TD3's actor always uses it)
    actor_q: str = "min"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4  # SAC entropy temperature
    init_alpha: float = 0.1  # SAC
    # SAC, in [-1, 1] action units (before action_scale, as SB3 and DSRL); None: -action_dim
    target_entropy: float | None = None
    # SAC: the entropy bonus in the TD target (soft Q). Off (jaxrl's backup_entropy option,
    # False by default in SERL) on sparse tasks that end on success: there a positive bonus per
    # step makes long episodes worth more than finishing, and the agent learns to avoid success.
    backup_entropy: bool = True
    tau: float = 0.005
    gamma: float = 0.99
    # [lo, hi]: the range every discounted return lies in (with a per-step reward in [r_lo,
    # r_hi], [r_lo, r_hi] / (1 - gamma)); TD targets are clipped to it. A bootstrapped critic
    # can otherwise climb out of the reachable range and take its own targets with it (DSRL-SAC
    # on PickPlace: Q rose to +94 with every true value in [-100, 0]). None: unbounded.
    value_bounds: list[float] | None = None
    n_step: int = 3
    batch_size: int = 256
    grad_clip: float = 1.0  # 0: off
    actor_delay: int = 2  # TD3: one actor update per this many critic updates
    explore_std: float = 0.1  # TD3: Gaussian exploration noise (actor output units)
    # TD3: AR(1) coefficient of that noise from one step to the next, per sub-env (0:
    # independent draws). The stationary std stays explore_std; correlated noise explores
    # actions that must hold one sign for several steps (opening a gripper), which
    # independent draws almost never do.
    explore_correlation: float = 0.0
    target_noise: float = 0.2  # TD3: target-policy smoothing std
    target_noise_clip: float = 0.5
    action_scale: float = 1.0  # actor outputs lie in [-action_scale, action_scale]
    zero_init_actor: bool = False  # residual RL: start exactly at the base policy
    # With > 0 an action (a residual, or DSRL's noise) moves off zero only where it buys a
    # relative gain in Q. TD3: actor loss -Q / mean|Q| + action_penalty * mean((a / scale)^2);
    # SAC: alpha log pi - Q + action_penalty * mean|Q| * mean((mean action / scale)^2).
    action_penalty: float = 0.0
    # Polyak rate of an averaged copy of the actor, moved after every actor step:
    # ema <- (1 - rate) ema + rate actor (0: off). When on, evals use the copy and checkpoints
    # save it as the actor that eval and serve load (the raw actor stays in training_state):
    # an average over the last ~1/rate actor steps moves less from one eval to the next.
    actor_ema: float = 0.0
    # decay of the actor's and the critics' learning rates over the run's env steps: none |
    # linear | cosine, down to lr_floor times the initial rates (robopolicy.rl.schedule)
    lr_decay: str = "none"
    lr_floor: float = 0.1


ALGOS = ("td3", "sac")
ACTIVATION_NAMES = ("relu", "tanh")
ACTOR_Q_REDUCTIONS = ("min", "mean")


def validate_agent_config(cfg: AgentConfig) -> None:
    if cfg.algo not in ALGOS:
        raise ValueError(f"agent.algo {cfg.algo!r} not in {ALGOS}")
    if cfg.activation not in ACTIVATION_NAMES:
        raise ValueError(f"agent.activation {cfg.activation!r} not in {ACTIVATION_NAMES}")
    if cfg.actor_q not in ACTOR_Q_REDUCTIONS:
        raise ValueError(f"agent.actor_q {cfg.actor_q!r} not in {ACTOR_Q_REDUCTIONS}")
    if not 1 <= cfg.target_subset <= cfg.critic_heads:
        raise ValueError(
            f"agent.target_subset {cfg.target_subset} must be in "
            f"[1, critic_heads={cfg.critic_heads}]"
        )
    if cfg.n_step < 1:
        raise ValueError(f"agent.n_step must be >= 1, got {cfg.n_step}")
    if not 0 < cfg.gamma <= 1 or not 0 < cfg.tau <= 1:
        raise ValueError(f"agent.gamma and agent.tau must be in (0, 1], got {cfg.gamma}, {cfg.tau}")
    if cfg.action_penalty < 0:
        raise ValueError(f"agent.action_penalty must be >= 0, got {cfg.action_penalty}")
    if not 0 <= cfg.explore_correlation < 1:
        raise ValueError(
            f"agent.explore_correlation must be in [0, 1), got {cfg.explore_correlation}"
        )
    if cfg.value_bounds is not None and (
        len(cfg.value_bounds) != 2 or not cfg.value_bounds[0] < cfg.value_bounds[1]
    ):
        raise ValueError(f"agent.value_bounds must be [lo, hi], lo < hi; got {cfg.value_bounds}")
    if cfg.action_scale <= 0:
        raise ValueError(f"agent.action_scale must be > 0, got {cfg.action_scale}")
    if cfg.actor_delay < 1:
        raise ValueError(
            f"agent.actor_delay must be >= 1 (critic steps per actor step), got {cfg.actor_delay}"
        )
    if not 0 <= cfg.actor_ema < 1:
        raise ValueError(f"agent.actor_ema (a Polyak rate) must be in [0, 1), got {cfg.actor_ema}")
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"agent.lr_decay {cfg.lr_decay!r} not in {LR_DECAYS}")
    if not 0 <= cfg.lr_floor <= 1:
        raise ValueError(f"agent.lr_floor must be in [0, 1], got {cfg.lr_floor}")
    if cfg.init_alpha <= 0:
        raise ValueError(
            f"agent.init_alpha (SAC's initial temperature) must be > 0, got {cfg.init_alpha}"
        )
