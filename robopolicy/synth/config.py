"""Config schemas of ``robopolicy synth`` (trajectory model) and ``robopolicy offline``."""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.rl.offline import OfflineAgentConfig


@dataclass
class SamplerConfig:
    num_steps: int = 32  # Heun steps (each 2 network evaluations but the last)
    length: int = 32  # rows per generated trajectory (a multiple of the U-Net's 4)
    batch_size: int = 256  # trajectories per sampler call


@dataclass
class SynthConfig:
    """``robopolicy synth train``: fit the trajectory diffusion model to an offline dataset."""

    name: str = "synth"
    dataset: str | None = None  # required (unless resuming)
    run_dir: str | None = None
    resume: str | None = None  # a checkpoint (or run) of this command to continue from
    seed: int = 0
    horizon: int = 32  # window length (ANCHORS: 32)
    stride: int = 8  # window stride (ANCHORS: 8)
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    steps: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 500
    ema_decay: float = 0.995
    save_every: int = 5000
    log_every: int = 250
    num_threads: int = 0
    inspect_trajectories: int = 256  # generated after training for inspect.json (0: skip)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class SyntheticDataConfig:
    model: str | None = None  # a `robopolicy synth train` run; None: real data only
    guidance: float = 0.0  # lambda; 0 = unguided
    fraction: float = 240 / 256  # share of each batch from the synthetic pool (PGD: 240/256)
    trajectories: int = 1024  # per pool
    regenerate_every: int = 10_000  # agent steps (the first pool is unguided)
    # diagnostic (oracle dynamics): keep the generated (s, a), take next state, reward and
    # termination from the simulator (gymnasium MuJoCo tasks only)
    relabel_with_simulator: bool = False
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class OfflineConfig:
    """``robopolicy offline``: train TD3+BC or IQL on real data, optionally mixed with
    (guided) synthetic data."""

    name: str = "offline"
    dataset: str | None = None  # required (unless resuming)
    run_dir: str | None = None
    resume: str | None = None  # a checkpoint (or run) of this command to continue from
    seed: int = 0
    steps: int = 100_000  # agent updates
    eval_every: int = 10_000
    eval_episodes: int = 5
    final_eval_episodes: int = 10
    eval_seed: int = 100_000
    save_every: int = 50_000
    log_every: int = 1000
    num_threads: int = 0
    agent: OfflineAgentConfig = field(default_factory=OfflineAgentConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)


def validate_sampler(cfg: SamplerConfig) -> None:
    if cfg.num_steps < 1 or cfg.length < 2 or cfg.batch_size < 1:
        raise ValueError(
            f"sampler needs num_steps >= 1, length >= 2, batch_size >= 1; got {cfg.num_steps}, "
            f"{cfg.length}, {cfg.batch_size}"
        )


def require_dataset(cfg) -> None:
    if not cfg.dataset:
        raise ValueError("dataset=<offline dataset .hdf5> is required")


def validate_offline_config(cfg: OfflineConfig) -> None:
    require_dataset(cfg)
    if not 0 <= cfg.synthetic.fraction < 1:
        raise ValueError(f"synthetic.fraction must be in [0, 1), got {cfg.synthetic.fraction}")
    if cfg.synthetic.model and cfg.synthetic.fraction == 0:
        raise ValueError("synthetic.model is set but synthetic.fraction is 0")
    if cfg.synthetic.guidance > 0 and not cfg.synthetic.model:
        raise ValueError("synthetic.guidance > 0 needs synthetic.model (a trajectory model run)")
    if cfg.synthetic.relabel_with_simulator and not cfg.synthetic.model:
        raise ValueError("synthetic.relabel_with_simulator needs synthetic.model")
    if cfg.synthetic.guidance < 0:
        raise ValueError(f"synthetic.guidance must be >= 0, got {cfg.synthetic.guidance}")
    for name in ("steps", "log_every", "save_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.synthetic.regenerate_every < 1:
        raise ValueError(
            f"synthetic.regenerate_every must be >= 1, got {cfg.synthetic.regenerate_every}"
        )
    validate_sampler(cfg.synthetic.sampler)
