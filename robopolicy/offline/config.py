"""Config schema of ``robopolicy offline``: the agent, its budget, and the synthetic data mixed
into its batches (a ``robopolicy synth train`` model, optionally policy-guided)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robopolicy.offline.agents import OfflineAgentConfig
from robopolicy.synth.config import SamplerConfig, require_dataset, validate_sampler


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
    device: str = "cpu"  # auto | cpu | cuda[:N]: where the trajectory model samples the pools
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
