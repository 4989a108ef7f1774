"""Diffusion Policy (Chi et al. 2023): DDPM training, DDPM or DDIM sampling, via diffusers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from robopolicy.data.normalizer import Normalizer
from robopolicy.policies.base import BasePolicy
from robopolicy.policies.config import PolicyConfig, PolicyShapes


class DiffusionPolicy(BasePolicy):
    """Denoises an action chunk conditioned on the encoded observation history.

    Training adds noise at a uniformly drawn step of the ``squaredcos_cap_v2`` schedule and
    regresses the noise (``epsilon``) or the clean chunk (``sample``). Sampling uses the same
    trained schedule through ``DDPMScheduler`` or ``DDIMScheduler`` (eta 0: deterministic given
    the initial noise). Actions live in [-1, 1] after normalisation, so samples are clipped there.
    """

    def __init__(self, cfg: PolicyConfig, shapes: PolicyShapes, normalizer: Normalizer) -> None:
        super().__init__(cfg, shapes, normalizer)
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=cfg.num_train_timesteps,
            beta_schedule=cfg.beta_schedule,
            clip_sample=True,
            prediction_type=cfg.prediction_type,
        )
        self.sampler = self._make_sampler()

    def _make_sampler(self) -> DDIMScheduler | DDPMScheduler:
        sampler_type = DDIMScheduler if self.cfg.sampler == "ddim" else DDPMScheduler
        return sampler_type.from_config(self.train_scheduler.config)

    def set_sampler(
        self, sampler: str | None = None, num_inference_steps: int | None = None
    ) -> None:
        super().set_sampler(sampler, num_inference_steps)
        self.sampler = self._make_sampler()

    def compute_loss(self, batch: dict) -> Tensor:
        cond = self.encode_obs(batch["obs"])
        actions = self.normalizer.normalize("actions", batch["actions"])
        noise = torch.randn_like(actions)
        steps = torch.randint(
            0, self.cfg.num_train_timesteps, (actions.shape[0],), device=actions.device
        )
        noisy = self.train_scheduler.add_noise(actions, noise, steps)
        prediction = self.denoiser(noisy, steps, cond)
        target = noise if self.cfg.prediction_type == "epsilon" else actions
        return F.mse_loss(prediction, target)

    def sampler_timesteps(self) -> Tensor:
        """The inference schedule's timesteps, noisiest first (a fresh copy)."""
        self.sampler.set_timesteps(self.num_inference_steps)
        return self.sampler.timesteps.clone()

    def _sample(
        self, cond: Tensor, noise: Tensor, warm_start: Tensor | None, start_step: int | None
    ) -> Tensor:
        timesteps = self.sampler_timesteps()
        sample = noise
        if warm_start is not None:
            # Re-noise the clean guess to the level of the first remaining step, with the
            # trained schedule, then run only the remaining steps of the same sampler.
            timesteps = timesteps[-start_step:]
            first = timesteps[:1].expand(noise.shape[0]).to(noise.device)
            sample = self.train_scheduler.add_noise(warm_start, noise, first)
        for t in timesteps:
            # a filled tensor, not a host-to-device copy: keeps the loop capturable as a CUDA graph
            step = torch.full((sample.shape[0],), int(t), dtype=t.dtype, device=sample.device)
            model_output = self.denoiser(sample, step, cond)
            sample = self.sampler.step(model_output, int(t), sample).prev_sample
        return sample.clamp(-1.0, 1.0)
