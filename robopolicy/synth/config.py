"""Config schemas of ``robopolicy synth``: the trajectory model and its sampler (``robopolicy
offline``'s schema, which uses the sampler's, lives in ``offline/config.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

SAMPLER_KINDS = ("reference", "fast_heun")
GUIDE_TARGETS = ("noisy", "denoised")
GUIDE_SCHEDULES = ("sine", "constant")


@dataclass
class GuideConfig:
    """How policy guidance is applied (its coefficient lambda is set where it is swept).
    The defaults are the PGD reference's: the raw gradient, taken on the noisy sample, from the
    first step, under the sine schedule with weight 0.3."""

    normalize: bool = False  # push by g / (||g|| + 1e-8) instead of g
    target: str = "noisy"  # noisy | denoised: where the gradient of log pi is taken
    delay_steps: int = 0  # no guidance on the first delay_steps sampler steps
    schedule: str = "sine"  # sine: lambda [(1 - i/N) + sine_weight sin(pi (i+1)/N)] | constant
    sine_weight: float = 0.3


@dataclass
class SamplerConfig:
    """The EDM sampler. ``reference``: the PGD reference's stochastic sampler (Karras et al.
    churn, 256 Heun steps); ``fast_heun``: deterministic Heun, no churn, for a CPU (16-32 steps).
    Guidance pushes once per step, so lambda is only comparable at the same kind and steps."""

    kind: str = "reference"  # reference | fast_heun
    num_steps: int = 256  # Heun steps (each 2 network evaluations but the last)
    length: int = 32  # rows per generated trajectory (a multiple of the U-Net's 4)
    batch_size: int = 256  # trajectories per sampler call
    s_churn: float = 80.0  # reference only: gamma = min(s_churn / N, sqrt(2) - 1)
    s_tmin: float = 0.05  # reference only: churn where s_tmin <= sigma <= s_tmax
    s_tmax: float = 50.0
    s_noise: float = 1.003  # reference only: scale of the churn noise
    guide: GuideConfig = field(default_factory=GuideConfig)


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
    device: str = "cpu"  # auto | cpu | cuda[:N]: where the model trains and samples
    inspect_trajectories: int = 256  # generated after training for inspect.json (0: skip)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def validate_sampler(cfg: SamplerConfig) -> None:
    if cfg.num_steps < 1 or cfg.length < 2 or cfg.batch_size < 1:
        raise ValueError(
            f"sampler needs num_steps >= 1, length >= 2, batch_size >= 1; got {cfg.num_steps}, "
            f"{cfg.length}, {cfg.batch_size}"
        )
    if cfg.kind not in SAMPLER_KINDS:
        raise ValueError(f"sampler.kind {cfg.kind!r} not in {SAMPLER_KINDS}")
    if cfg.s_churn < 0 or cfg.s_noise <= 0 or not 0 <= cfg.s_tmin <= cfg.s_tmax:
        raise ValueError(
            "sampler needs s_churn >= 0, s_noise > 0 and 0 <= s_tmin <= s_tmax; got "
            f"s_churn={cfg.s_churn}, s_noise={cfg.s_noise}, s_tmin={cfg.s_tmin}, "
            f"s_tmax={cfg.s_tmax}"
        )
    guide = cfg.guide
    if guide.target not in GUIDE_TARGETS:
        raise ValueError(f"sampler.guide.target {guide.target!r} not in {GUIDE_TARGETS}")
    if guide.schedule not in GUIDE_SCHEDULES:
        raise ValueError(f"sampler.guide.schedule {guide.schedule!r} not in {GUIDE_SCHEDULES}")
    if guide.delay_steps < 0:
        raise ValueError(f"sampler.guide.delay_steps must be >= 0, got {guide.delay_steps}")


def require_dataset(cfg) -> None:
    if not cfg.dataset:
        raise ValueError("dataset=<offline dataset .hdf5> is required")
