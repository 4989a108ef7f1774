"""Config schemas of ``robopolicy synth``: the trajectory model and its sampler (``robopolicy
offline``'s schema, which uses the sampler's, lives in ``offline/config.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def validate_sampler(cfg: SamplerConfig) -> None:
    if cfg.num_steps < 1 or cfg.length < 2 or cfg.batch_size < 1:
        raise ValueError(
            f"sampler needs num_steps >= 1, length >= 2, batch_size >= 1; got {cfg.num_steps}, "
            f"{cfg.length}, {cfg.batch_size}"
        )


def require_dataset(cfg) -> None:
    if not cfg.dataset:
        raise ValueError("dataset=<offline dataset .hdf5> is required")
