"""The dynamics-error scaling table of ``robopolicy bench pgd`` (``scaling.*``): trajectory
models of a few U-Net sizes, each trained for a few step budgets, and the dynamics error of
their unguided samples (``synth/dynamics.py``: each transition replayed in MuJoCo from its own
state). PGD's gain needs synthetic transitions close to the true dynamics; this table says how
the error falls with model size and training, so the scale a GPU run needs can be read off.

Each budget is its own run (its own warm-up and cosine decay), not a checkpoint of a longer one:
a model stopped early on a long schedule would look worse than the same budget trained to its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.synth.config import SynthConfig
from robopolicy.synth.model import load_trajectory_model

WARMUP_SHARE = 0.05  # warm-up steps of a budget, capped by the synth config's own


@dataclass
class ScalingConfig:
    # U-Net channel lists to compare (empty: no table), e.g. [[16, 32, 64], [32, 64, 128]]
    down_dims: list[list[int]] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # training budgets of every size
    trajectories: int = 256  # unguided samples per model for its dynamics error
    overrides: list[str] = field(default_factory=list)  # applied to these models' training


def validate_scaling(cfg: ScalingConfig) -> None:
    if not cfg.down_dims:
        return
    if not cfg.steps or min(cfg.steps) < 1:
        raise ValueError(f"scaling.steps must list budgets >= 1, got {cfg.steps}")
    if any(not dims for dims in cfg.down_dims):
        raise ValueError(f"scaling.down_dims has an empty channel list: {cfg.down_dims}")
    if cfg.trajectories < 1:
        raise ValueError(f"scaling.trajectories must be >= 1, got {cfg.trajectories}")


def scaling_rows(
    cfg: ScalingConfig, name: str, synth_config: str, data_path: str, out: Path
) -> list[dict[str, Any]]:
    """Train every (size, budget) model on ``data_path`` and measure its dynamics error."""
    from robopolicy.synth.train import train_trajectory_model

    rows = []
    for dims in cfg.down_dims:
        for steps in cfg.steps:
            tag = "-".join(map(str, dims))
            base = load_config(CONFIG_DIR / synth_config, SynthConfig)
            warmup = min(base.warmup_steps, max(1, int(WARMUP_SHARE * steps)))
            overrides = [
                f"dataset={data_path}",
                f"run_dir={out / name / 'scaling' / f'unet{tag}-steps{steps}'}",
                f"name=scaling_{name}_unet{tag}_steps{steps}",
                f"down_dims=[{','.join(map(str, dims))}]",
                f"steps={steps}",
                f"warmup_steps={warmup}",
                f"save_every={steps}",
                f"log_every={min(base.log_every, steps)}",
                f"inspect_trajectories={cfg.trajectories}",
                *cfg.overrides,
            ]
            synth_cfg = load_config(CONFIG_DIR / synth_config, SynthConfig, overrides)
            result = train_trajectory_model(synth_cfg)
            model, _ = load_trajectory_model(result["checkpoint"])
            rows.append(
                {
                    "dataset": name,
                    "down_dims": list(dims),
                    "parameters": sum(p.numel() for p in model.denoiser.parameters()),
                    "steps": steps,
                    "final_loss": result["final_loss"],
                    "dynamics": result["inspect"]["dynamics"],
                    "terminal_rate": result["inspect"]["terminal_rate"],
                    "minutes": result["minutes"],
                    "run_dir": result["run_dir"],
                }
            )
    return rows
