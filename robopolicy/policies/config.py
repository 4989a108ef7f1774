"""The policy config schema (``configs/policy/*.yaml`` fill it). Saved inside every checkpoint,
together with the shapes that the dataset fixed, so that a checkpoint rebuilds its model alone."""

from __future__ import annotations

from dataclasses import dataclass, field

POLICY_TYPES = ("diffusion", "flow")
BACKBONES = ("unet", "mlp")


@dataclass
class PolicyConfig:
    type: str = "diffusion"  # diffusion | flow
    backbone: str = "unet"  # unet (temporal 1-D U-Net, FiLM) | mlp (residual MLP, for CPU speed)
    obs_horizon: int = 2
    pred_horizon: int = 16
    action_horizon: int = 8  # actions executed from each chunk before re-planning
    # Diffusion (diffusers schedulers).
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # epsilon | sample
    sampler: str = "ddim"  # ddim (deterministic given the noise, eta 0) | ddpm
    # Sampler steps at inference: DDIM/DDPM steps, or flow integration steps.
    num_inference_steps: int = 10
    # Flow matching: x_t = (1 - t) x_0 + t eps, velocity eps - x_0, integrated from t=1 to 0.
    integrator: str = "euler"  # euler | midpoint
    # Backbones.
    down_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    mlp_hidden_dim: int = 512
    mlp_num_layers: int = 4
    time_embed_dim: int = 64
    # Observations.
    image_encoder: str = "conv"  # conv (small, CPU) | resnet18 (robomimic VisualCore, GroupNorm)
    image_feature_dim: int = 64
    crop_size: int | None = None  # default: 90% of the image size (76 of 84)
    normalizer_mode: str = "limits"  # limits (min/max to [-1, 1]) | gaussian


@dataclass
class PolicyShapes:
    """What the data fixes: observation keys and shapes, action size, control rate."""

    obs: dict[str, list[int]] = field(default_factory=dict)
    action_dim: int = 0
    control_hz: float = 0.0


def validate_policy_config(cfg: PolicyConfig) -> None:
    """Reject combinations that would fail deep inside a forward pass."""
    checks = [
        (cfg.type in POLICY_TYPES, f"policy.type {cfg.type!r} not in {POLICY_TYPES}"),
        (cfg.backbone in BACKBONES, f"policy.backbone {cfg.backbone!r} not in {BACKBONES}"),
        (cfg.obs_horizon >= 1, f"policy.obs_horizon must be >= 1, got {cfg.obs_horizon}"),
        (
            cfg.action_horizon >= 1
            and cfg.obs_horizon - 1 + cfg.action_horizon <= cfg.pred_horizon,
            f"policy: need obs_horizon - 1 + action_horizon <= pred_horizon (the executed "
            f"actions start at the newest observation), got {cfg.obs_horizon} - 1 + "
            f"{cfg.action_horizon} > {cfg.pred_horizon}",
        ),
        (
            cfg.prediction_type in ("epsilon", "sample"),
            f"policy.prediction_type {cfg.prediction_type!r} not in ('epsilon', 'sample')",
        ),
        (cfg.sampler in ("ddim", "ddpm"), f"policy.sampler {cfg.sampler!r} not in (ddim, ddpm)"),
        (
            cfg.integrator in ("euler", "midpoint"),
            f"policy.integrator {cfg.integrator!r} not in (euler, midpoint)",
        ),
        (
            1 <= cfg.num_inference_steps <= cfg.num_train_timesteps,
            f"policy.num_inference_steps ({cfg.num_inference_steps}) must be in [1, "
            f"num_train_timesteps={cfg.num_train_timesteps}]",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
