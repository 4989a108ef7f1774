"""The policy API that every BC policy implements and every wrapper (RTI, residual RL, DSRL,
deployment) relies on, and nothing more.

- ``predict_chunk(obs, noise=None, *, warm_start=None, start_step=None)`` -> (B, H, A) actions,
  unnormalised. ``obs`` holds (B, T_obs, ...) tensors. ``noise`` (B, H, A) fixes the sampler's
  initial noise: with DDIM (eta 0) or flow integration the chunk is then a deterministic
  function of (obs, noise) (DSRL relies on it). ``warm_start`` (B, H, A) is a clean,
  unnormalised guess; the policy normalises it, noises it with its own trained schedule to the
  noise level ``start_step`` sampler steps before the end, and runs those last ``start_step``
  steps only (RTI).
- ``compute_loss(batch)``: the training loss of one batch from ``SequenceWindows``.
- ``select_action(obs)`` -> (B, A) with an internal action queue; ``reset()`` clears it.
- ``set_sampler(sampler=None, num_inference_steps=None)`` switches the inference sampler
  without touching the weights (RTI runs the trained DDPM chain; chunked execution DDIM-10);
  ``network_evaluations(start_step=None)`` says what one ``predict_chunk`` call costs.
- Attributes ``obs_horizon``, ``pred_horizon``, ``action_horizon``, ``action_dim``,
  ``num_inference_steps``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robopolicy.data.normalizer import Normalizer
from robopolicy.inference.chunking import ChunkExecutor
from robopolicy.nets import ConditionalUnet1D, MLPDenoiser, ObservationEncoder
from robopolicy.policies.config import PolicyConfig, PolicyShapes, validate_policy_config

IMAGE_NDIM = 3  # H, W, C


class BasePolicy(nn.Module):
    """Observation encoding, normalisation and the action queue shared by diffusion and flow.

    Subclasses implement ``compute_loss`` and ``_sample`` (denoise from initial noise, in
    normalised action space).
    """

    def __init__(self, cfg: PolicyConfig, shapes: PolicyShapes, normalizer: Normalizer) -> None:
        super().__init__()
        validate_policy_config(cfg)
        if shapes.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {shapes.action_dim}")
        needed = {"actions", *shapes.obs} - set(self._image_keys(shapes))
        missing = sorted(needed - set(normalizer.keys))
        if missing:
            raise ValueError(f"normalizer lacks statistics for {missing}")
        self.cfg = cfg
        self.shapes = shapes
        self.obs_horizon = cfg.obs_horizon
        self.pred_horizon = cfg.pred_horizon
        self.action_horizon = cfg.action_horizon
        self.action_dim = shapes.action_dim
        self.num_inference_steps = cfg.num_inference_steps
        self.normalizer = normalizer
        image_keys = self._image_keys(shapes)
        self.obs_encoder = ObservationEncoder(
            low_dim_keys={k: v[0] for k, v in shapes.obs.items() if k not in image_keys},
            image_keys={k: tuple(shapes.obs[k]) for k in image_keys},
            obs_horizon=cfg.obs_horizon,
            image_encoder=cfg.image_encoder,
            image_feature_dim=cfg.image_feature_dim,
            crop_size=cfg.crop_size,
        )
        self.denoiser = self._make_denoiser(cfg, self.obs_encoder.out_dim)
        self._executor: ChunkExecutor | None = None

    @staticmethod
    def _image_keys(shapes: PolicyShapes) -> list[str]:
        return sorted(k for k, v in shapes.obs.items() if len(v) == IMAGE_NDIM)

    def _make_denoiser(self, cfg: PolicyConfig, cond_dim: int) -> nn.Module:
        if cfg.backbone == "unet":
            return ConditionalUnet1D(
                action_dim=self.action_dim,
                cond_dim=cond_dim,
                down_dims=tuple(cfg.down_dims),
                kernel_size=cfg.kernel_size,
                time_embed_dim=cfg.time_embed_dim,
            )
        return MLPDenoiser(
            action_dim=self.action_dim,
            horizon=cfg.pred_horizon,
            cond_dim=cond_dim,
            hidden_dim=cfg.mlp_hidden_dim,
            num_layers=cfg.mlp_num_layers,
            time_embed_dim=cfg.time_embed_dim,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- conditioning ---------------------------------------------------------------------
    def encode_obs(self, obs: dict[str, Tensor]) -> Tensor:
        """Normalise low-dim observations (images pass through) and encode to (B, cond_dim)."""
        missing = sorted(set(self.shapes.obs) - set(obs))
        if missing:
            raise KeyError(
                f"observation lacks keys {missing}; policy expects {sorted(self.shapes.obs)}"
            )
        for key, shape in self.shapes.obs.items():
            value = obs[key]
            if value.ndim != len(shape) + 2 or list(value.shape[2:]) != list(shape):
                raise ValueError(
                    f"observation {key!r} has shape {tuple(value.shape)}; expected "
                    f"(B, T_obs={self.obs_horizon}, {', '.join(map(str, shape))})"
                )
            if value.shape[1] != self.obs_horizon:
                raise ValueError(
                    f"observation {key!r} has {value.shape[1]} time steps; policy obs_horizon "
                    f"is {self.obs_horizon}"
                )
        normalized = self.normalizer.normalize_dict({k: obs[k] for k in self.shapes.obs})
        return self.obs_encoder(normalized)

    # ---- the API ---------------------------------------------------------------------------
    def set_sampler(
        self, sampler: str | None = None, num_inference_steps: int | None = None
    ) -> None:
        """Change how chunks are sampled (not how they were trained); None keeps a setting."""
        if sampler is not None:
            self.cfg.sampler = sampler
        if num_inference_steps is not None:
            self.cfg.num_inference_steps = num_inference_steps
        validate_policy_config(self.cfg)
        self.num_inference_steps = self.cfg.num_inference_steps

    def network_evaluations(self, start_step: int | None = None) -> int:
        """Denoiser forward passes of one ``predict_chunk`` call (per batch row)."""
        return start_step or self.num_inference_steps

    def forward(self, batch: dict) -> Tensor:
        """The training loss, so that DistributedDataParallel can wrap the policy."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: dict) -> Tensor:
        raise NotImplementedError

    def _sample(
        self, cond: Tensor, noise: Tensor, warm_start: Tensor | None, start_step: int | None
    ) -> Tensor:
        """Denoise ``noise`` (normalised action space) conditioned on ``cond``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_chunk(
        self,
        obs: dict[str, Tensor],
        noise: Tensor | None = None,
        *,
        warm_start: Tensor | None = None,
        start_step: int | None = None,
    ) -> Tensor:
        """An action chunk (B, pred_horizon, action_dim), unnormalised (see the module doc)."""
        cond = self.encode_obs(obs)
        shape = (cond.shape[0], self.pred_horizon, self.action_dim)
        if noise is None:
            noise = torch.randn(shape, device=cond.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {shape}")
        if warm_start is not None:
            if tuple(warm_start.shape) != shape:
                raise ValueError(
                    f"warm_start has shape {tuple(warm_start.shape)}; expected {shape}"
                )
            if start_step is None or not 1 <= start_step <= self.num_inference_steps:
                raise ValueError(
                    f"start_step must be in [1, num_inference_steps={self.num_inference_steps}] "
                    f"with warm_start, got {start_step}"
                )
            warm_start = self.normalizer.normalize("actions", warm_start)
        actions = self._sample(cond, noise.to(cond), warm_start, start_step)
        return self.normalizer.unnormalize("actions", actions)

    @torch.no_grad()
    def chunk_from_features(self, features: Tensor, noise: Tensor) -> Tensor:
        """``predict_chunk`` from observations already encoded by ``encode_obs`` (B, cond_dim).

        DSRL's noise-aliased critic decodes many noises per state: encoding once saves time.
        """
        shape = (features.shape[0], self.pred_horizon, self.action_dim)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {shape}")
        return self.normalizer.unnormalize("actions", self._sample(features, noise, None, None))

    @torch.no_grad()
    def select_action(self, obs: dict[str, Tensor]) -> Tensor:
        """The next action (B, A) for the current observation (B, ...), without a time axis.

        Plans a chunk from the last ``obs_horizon`` observations and executes
        ``action_horizon`` of its actions before planning again; the timing is drawn in
        ``robopolicy.inference.chunking``. Call ``reset()`` at every episode start.
        """
        batch = next(iter(obs.values())).shape[0]
        if self._executor is None or self._executor.batch_size != batch:
            self._executor = ChunkExecutor(self, batch)
        return self._executor.act(obs)

    def reset(self) -> None:
        """Forget the observation history and the queued actions."""
        self._executor = None
