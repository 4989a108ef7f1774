"""The trajectory diffusion model: a 1-D U-Net over rows [obs, arctanh(action), reward, done]
in EDM's parameterisation, with the row standardisation it was trained with.

The U-Net is Diffusion Policy's temporal U-Net (``robopolicy.nets.unet1d``) with the row
features as channels and no conditioning vector: the model is unconditional, guidance enters
only at sampling time.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robopolicy.checkpoint import (
    CheckpointError,
    load_state,
    load_strict,
    read_config,
    resolve_checkpoint,
)
from robopolicy.nets.unet1d import ConditionalUnet1D
from robopolicy.synth.config import SamplerConfig
from robopolicy.synth.edm import EDMConfig, EDMDenoiser, Guide, edm_loss, edm_sample
from robopolicy.synth.trajectories import RowLayout, RowNormalizer


class TrajectoryModel(nn.Module):
    def __init__(
        self,
        layout: RowLayout,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        edm: EDMConfig | None = None,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.down_dims = tuple(down_dims)
        self.kernel_size = kernel_size
        self.edm = edm or EDMConfig()
        unet = ConditionalUnet1D(
            layout.width, cond_dim=0, down_dims=self.down_dims, kernel_size=kernel_size
        )
        self.denoiser = EDMDenoiser(unet, self.edm.sigma_data)
        self.normalizer = RowNormalizer(layout.width)

    @property
    def horizon_multiple(self) -> int:
        return self.denoiser.net.horizon_multiple

    def loss(self, normalized_windows: Tensor) -> Tensor:
        return edm_loss(self.denoiser, normalized_windows, self.edm)

    @torch.no_grad()
    def sample(
        self,
        num: int,
        sampler: SamplerConfig,
        guide: Guide | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(num, sampler.length, width) trajectories in model space (standardised)."""
        length = sampler.length
        if length % self.horizon_multiple:
            raise ValueError(
                f"trajectory length {length} must be a multiple of {self.horizon_multiple} "
                f"(the U-Net halves it {len(self.down_dims) - 1} times)"
            )
        shape = (num, length, self.layout.width)
        device = self.normalizer.mean.device
        return edm_sample(self.denoiser, shape, sampler, self.edm, guide, generator, device)

    def describe(self) -> dict[str, Any]:
        """What ``load_trajectory_model`` needs to rebuild the network."""
        return {
            "obs_dim": self.layout.obs_dim,
            "action_dim": self.layout.action_dim,
            "down_dims": list(self.down_dims),
            "kernel_size": self.kernel_size,
            "edm": asdict(self.edm),
        }


def load_trajectory_model(path: str | Path) -> tuple[TrajectoryModel, dict[str, Any]]:
    """A ``robopolicy synth train`` checkpoint -> (model in eval mode, its config)."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    spec = config.get("trajectory_model")
    if spec is None:
        raise CheckpointError(f"{path} is not a trajectory-model checkpoint (no trajectory_model)")
    model = TrajectoryModel(
        RowLayout(spec["obs_dim"], spec["action_dim"]),
        tuple(spec["down_dims"]),
        spec["kernel_size"],
        EDMConfig(**spec["edm"]),
    )
    normalizer = {f"normalizer.{k}": v for k, v in load_state(path, "normalizer").items()}
    state = {**load_state(path, "model"), **normalizer}
    load_strict(model, state, f"{path}/model.safetensors")
    return model.eval(), config
