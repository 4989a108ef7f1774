"""Flow-matching policy: a learned velocity field integrated from noise to an action chunk.

Convention: x_t = (1 - t) x_0 + t eps with x_0 the (normalised) action chunk and eps ~ N(0, I),
so t = 0 is data and t = 1 is noise; the network regresses the velocity eps - x_0, and sampling
integrates dx/dt = v from t = 1 down to t = 0 in ``num_inference_steps`` Euler or midpoint
steps. Given the initial noise, sampling is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robopolicy.policies.base import BasePolicy

TIME_SCALE = 1000.0  # the time embedding is shared with diffusion steps (0..999)


class FlowPolicy(BasePolicy):
    def velocity(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.denoiser(x, t * TIME_SCALE, cond)

    def set_sampler(
        self, sampler: str | None = None, num_inference_steps: int | None = None
    ) -> None:
        """Only the number of integration steps can change: a diffusion sampler (ddim, ddpm)
        has no meaning for a velocity field, and ignoring one would report results under a
        sampler that never ran."""
        if sampler is not None:
            raise ValueError(
                f"sampler {sampler!r} does not apply to a flow-matching policy (it integrates its "
                f"velocity with policy.integrator={self.cfg.integrator!r}); leave the "
                "sampler unset"
            )
        super().set_sampler(None, num_inference_steps)

    def network_evaluations(self, start_step: int | None = None) -> int:
        steps = start_step or self.num_inference_steps
        return 2 * steps if self.cfg.integrator == "midpoint" else steps

    def compute_loss(self, batch: dict) -> Tensor:
        cond = self.encode_obs(batch["obs"])
        actions = self.normalizer.normalize("actions", batch["actions"])
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device)
        x_t = (1 - t[:, None, None]) * actions + t[:, None, None] * noise
        return F.mse_loss(self.velocity(x_t, t, cond), noise - actions)

    def _sample(
        self, cond: Tensor, noise: Tensor, warm_start: Tensor | None, start_step: int | None
    ) -> Tensor:
        n = self.num_inference_steps
        steps = n
        x = noise
        if warm_start is not None:
            # Start on the straight path between the guess and the noise, start_step steps
            # (t = start_step / n) before the end.
            steps = start_step
            t0 = steps / n
            x = (1 - t0) * warm_start + t0 * noise
        dt = 1.0 / n
        for i in range(steps, 0, -1):
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            v = self.velocity(x, t, cond)
            if self.cfg.integrator == "midpoint":
                x_mid = x - 0.5 * dt * v
                v = self.velocity(x_mid, t - 0.5 * dt, cond)
            x = x - dt * v
        return x.clamp(-1.0, 1.0)
