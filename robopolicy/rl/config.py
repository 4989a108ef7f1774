"""The ``robopolicy finetune`` config schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robopolicy.device import resolve_device
from robopolicy.rl.agent_config import AgentConfig, validate_agent_config

NOISE_SPANS = ("chunk", "executed")  # DSRL: which steps' noise the agent chooses
# DSRL: where reward_offset applies: once per executed env step, summed over the chunk (the
# reference's), or once per chunk (this project's first form)
DSRL_REWARDS = ("per_env_step", "per_chunk")

METHODS = ("residual", "dsrl_sac", "dsrl_na", "expo", "scratch")
# methods built on a BC policy (frozen, except EXPO's, whose denoiser keeps learning by imitation)
BASE_METHODS = ("residual", "dsrl_sac", "dsrl_na", "expo")
# methods whose agent step is one executed chunk (their sub-envs step one by one, in-process)
CHUNK_METHODS = ("dsrl_sac", "dsrl_na", "expo")


# What a resume may change (``robopolicy finetune CONFIG resume=RUN key=value``): the budget,
# the cadence of evals, logs and checkpoints (evals draw from their own seeded streams), and the
# device, which moves the run (bit-exact only on the device it ran on). The rest comes from
# the run.
RESUMABLE = (
    "env_steps",
    "eval_every",
    "eval_episodes",
    "final_eval_episodes",
    "video_episodes",
    "save_every",
    "log_every",
    "device",
)


@dataclass
class ExpoConfig:
    """EXPO's own settings (``robopolicy.rl.expo``); the critic and the edit policy's SAC
    settings are ``agent.*`` (``agent.action_scale`` is not used: the edit bound is here)."""

    num_samples: int = 8  # N base chunks (and their N edits) per selection (EXPO: 8)
    edit_scale: float = 0.05  # beta: edits lie in [-beta, beta] per action dim (EXPO: 0.05)
    base_lr: float = 1e-4  # the base's online imitation (AdamW, Diffusion Policy's rate)
    base_batch_size: int = 256
    base_demo_fraction: float = 0.5  # share of each imitation batch drawn from the demos
    base_update_every: int = 1  # critic updates per imitation step of the base
    # Polyak rate of the acting base toward the one the imitation trains (0: they are one). As
    # Diffusion Policy evaluates an EMA of its weights: a fresh optimiser's first steps on a
    # converged base shake it, and the average rides them out
    base_ema: float = 0.0
    # finished online episodes enter the base's imitation data in blocks of at least this many
    # env steps (each block re-indexes the windows)
    window_refresh: int = 1000
    # an online episode is imitated up to its first frame with a low-dim feature beyond this
    # many demo half-spans from the demos' centre (the normaliser maps the demos to [-1, 1]);
    # null imitates every frame, as EXPO's reference does (its datasets cover the online states)
    imitation_obs_limit: float | None = 1.5


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    # residual | dsrl_sac | dsrl_na | scratch (plain RL on the env's observations).
    # DSRL's noise bound m is agent.action_scale.
    method: str = "residual"
    base: str | None = None  # the BC checkpoint (a run or checkpoint dir), frozen except by EXPO
    env_id: str | None = None  # default: the base's task
    env_kwargs: dict[str, Any] | None = None  # default: the base's task (else {})
    obs_keys: list[str] | None = None  # scratch on a dict-observation env: keys to use
    # residual, expo: demo dataset (default: the base's training data)
    demos: str | None = None
    demo_fraction: float = 0.5  # residual, expo: share of each critic batch from demonstrations
    # residual: > 1 lets the residual open or close the gripper (its open/close dims get
    # a_base + gain * r / action_scale, executed as the sign, 0 counting as open); a flip
    # needs |r| > action_scale / gain, and a demo's opposite command (-+1) needs gain >= 2
    # to be reachable. 0 keeps the base's command.
    residual_gripper_gain: float = 0.0
    # residual: the critic chooses the open/close commands (argmax over +-1 of its mean Q)
    # once the actor starts learning (the base's before); the checkpoint then keeps the critic.
    # Excludes residual_gripper_gain.
    residual_gripper_by_critic: bool = False
    # DSRL: eval (and serving) draws the noise from the trained actor's distribution (as the
    # reference does by default); false: the actor's mean noise, a deterministic policy
    dsrl_sample_noise: bool = True
    # DSRL: the agent chooses the noise of the whole predicted chunk (chunk: H x A, as DSRL)
    # or of the executed steps only, the rest held at zero (executed: action_horizon x A)
    dsrl_noise: str = "chunk"
    reward_offset: float = 0.0  # added to every stored reward (DSRL: -1, sparse {-1, 0})
    # DSRL: per_env_step adds reward_offset to each executed env step's reward and sums over
    # the chunk (DSRL's reference: a chunk's sparse reward lies in [-action_horizon, 0]);
    # per_chunk adds it once to the chunk's summed reward ({-1, 0} per chunk). The two agree
    # for one-step methods. per_env_step's returns are action_horizon times larger, so SAC's
    # agent.init_alpha must grow by the same factor to keep the same temperature (measured on
    # PickPlace: at 0.1 the noise policy narrows early, 0.8 matches per_chunk at 0.1).
    dsrl_reward: str = "per_env_step"
    run_dir: str | None = None  # default: runs/<name>/<timestamp>
    resume: str | None = None  # a run or checkpoint dir to continue from
    seed: int = 0
    env_steps: int = 100_000  # summed over sub-envs
    num_envs: int = 2
    warmup_steps: int = 2000  # env steps before learning: base (+ noise) or random actions
    critic_warmup_updates: int = 2000  # critic-only updates before the actor learns
    # gradient updates per agent step of each sub-env (UTD): per env step for residual and
    # scratch, per executed chunk for DSRL
    updates_per_step: float = 1.0
    buffer_capacity: int = 200_000
    eval_every: int = 5000  # env steps (0: only at the end)
    eval_episodes: int = 20
    final_eval_episodes: int = 50
    video_episodes: int = 2  # mp4 of the final eval's first episodes (0: none)
    eval_seed: int = 100_000
    save_every: int = 10_000  # env steps (also at the end)
    log_every: int = 1000  # env steps
    num_threads: int = 0  # torch intra-op threads (0: torch's default)
    # where the networks (base policy, actor, critics) live and learn: auto (CUDA when
    # visible), cpu, cuda, cuda:N. The envs and the replay buffer stay on the CPU; batches move
    # to the device per update.
    device: str = "auto"
    agent: AgentConfig = field(default_factory=AgentConfig)
    expo: ExpoConfig = field(default_factory=ExpoConfig)


def _validate_expo(expo: ExpoConfig) -> None:
    if expo.num_samples < 1:
        raise ValueError(
            f"expo.num_samples must be >= 1 (base chunks per selection), got {expo.num_samples}"
        )
    if expo.edit_scale <= 0:
        raise ValueError(
            f"expo.edit_scale must be > 0 (the edit bound beta; EXPO: 0.05), got {expo.edit_scale}"
        )
    if not 0 <= expo.base_demo_fraction <= 1:
        raise ValueError(
            f"expo.base_demo_fraction must be in [0, 1], got {expo.base_demo_fraction}"
        )
    for name in ("base_batch_size", "base_update_every", "window_refresh"):
        if getattr(expo, name) < 1:
            raise ValueError(f"expo.{name} must be >= 1, got {getattr(expo, name)}")
    if expo.base_lr <= 0:
        raise ValueError(f"expo.base_lr must be > 0, got {expo.base_lr}")
    if not 0 <= expo.base_ema < 1:
        raise ValueError(f"expo.base_ema (a Polyak rate) must be in [0, 1), got {expo.base_ema}")
    if expo.imitation_obs_limit is not None and expo.imitation_obs_limit < 1:
        raise ValueError(
            f"expo.imitation_obs_limit must be >= 1 (the demos span [-1, 1]) or null, got "
            f"{expo.imitation_obs_limit}"
        )


def validate_finetune_config(cfg: FinetuneConfig) -> None:
    validate_agent_config(cfg.agent)  # before the base, the demos and the run folder
    if cfg.method not in METHODS:
        raise ValueError(f"method {cfg.method!r} not in {METHODS}")
    if cfg.method in BASE_METHODS and not cfg.base:
        raise ValueError(f"method {cfg.method} needs base=<BC checkpoint>")
    if cfg.method in CHUNK_METHODS and cfg.agent.algo != "sac":
        raise ValueError(f"method {cfg.method} is built on SAC; agent.algo is {cfg.agent.algo!r}")
    if cfg.method not in ("residual", "expo") and cfg.demo_fraction > 0:
        raise ValueError(f"demo_fraction must be 0 for method {cfg.method} (demos: residual, expo)")
    _validate_expo(cfg.expo)
    if cfg.method == "scratch" and not cfg.env_id:
        raise ValueError("method scratch needs env_id=...")
    if cfg.residual_gripper_gain != 0 and (
        cfg.method != "residual" or cfg.residual_gripper_gain <= 1
    ):
        raise ValueError(
            f"residual_gripper_gain {cfg.residual_gripper_gain}: must be 0, or > 1 (a residual "
            f"bounded by agent.action_scale could not flip a +-1 command otherwise) with "
            f"method residual (not {cfg.method})"
        )
    if cfg.residual_gripper_by_critic and (
        cfg.method != "residual" or cfg.residual_gripper_gain != 0
    ):
        raise ValueError(
            "residual_gripper_by_critic: only for method residual, and not together with "
            f"residual_gripper_gain (got method {cfg.method}, gain {cfg.residual_gripper_gain})"
        )
    if cfg.dsrl_reward not in DSRL_REWARDS:
        raise ValueError(f"dsrl_reward {cfg.dsrl_reward!r} not in {DSRL_REWARDS}")
    if cfg.dsrl_noise not in NOISE_SPANS:
        raise ValueError(f"dsrl_noise {cfg.dsrl_noise!r} not in {NOISE_SPANS}")
    if cfg.agent.explore_correlation > 0 and cfg.agent.algo != "td3":
        raise ValueError(
            "agent.explore_correlation shapes TD3's exploration noise; SAC explores by its "
            "own sampled actions"
        )
    if not 0 <= cfg.demo_fraction < 1:
        raise ValueError(f"demo_fraction must be in [0, 1), got {cfg.demo_fraction}")
    resolve_device(cfg.device)
    if cfg.video_episodes < 0:
        raise ValueError(f"video_episodes must be >= 0, got {cfg.video_episodes}")
    for name in ("env_steps", "num_envs", "buffer_capacity"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
