"""EDM (Karras et al. 2022): the denoiser's preconditioning, its training loss and its Heun
sampler (stochastic, as the PGD reference samples, or deterministic), over (B, L, F) trajectories.

    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4
Training draws ln(sigma) ~ N(P_mean, P_std^2) and weights the squared error by
(sigma^2 + sd^2) / (sigma sd)^2, so every noise level contributes on the same scale. Sampling
walks sigma_max -> sigma_min on the rho-warped grid with Heun's second-order step, and a last
Euler step to sigma = 0. The stochastic sampler (Karras et al. Algorithm 2) first "churns" each
step: it raises the noise level to sigma_hat = sigma (1 + gamma) by adding fresh noise,

    x_hat = x + sqrt(sigma_hat^2 - sigma^2) S_noise eps,   gamma = min(S_churn / N, sqrt(2) - 1)
    where S_tmin <= sigma <= S_tmax (else 0),

then takes the Heun step from (x_hat, sigma_hat). The PGD reference's Euler predictor starts
from the un-churned x; here it starts from x_hat, as in Algorithm 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robopolicy.synth.config import SamplerConfig

# The U-Net's sinusoidal time embedding resolves inputs on a 0..1000 scale (diffusion steps);
# c_noise = ln(sigma)/4 spans about -1.6..1.1, so it is stretched onto that scale.
NOISE_EMBED_SCALE = 250.0


@dataclass
class EDMConfig:
    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0


class EDMDenoiser(nn.Module):
    """Wraps a network ``net(x, time, cond)`` (the 1-D U-Net) into D(x; sigma)."""

    def __init__(self, net: nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0])
        s = sigma[:, None, None]
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        no_cond = x.new_zeros(x.shape[0], 0)
        return c_skip * x + c_out * self.net(c_in * x, NOISE_EMBED_SCALE * c_noise, no_cond)


def edm_loss(denoiser: EDMDenoiser, x0: Tensor, cfg: EDMConfig) -> Tensor:
    sigma = (cfg.p_mean + cfg.p_std * torch.randn(x0.shape[0], device=x0.device)).exp()
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    noisy = x0 + sigma[:, None, None] * torch.randn_like(x0)
    error = (denoiser(noisy, sigma) - x0) ** 2
    return (weight[:, None, None] * error).mean()


def karras_sigmas(num_steps: int, cfg: EDMConfig) -> Tensor:
    """sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then sigma_N = 0."""
    if num_steps < 1:
        raise ValueError(f"the sampler needs >= 1 step, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64)
    lo, hi = cfg.sigma_min ** (1 / cfg.rho), cfg.sigma_max ** (1 / cfg.rho)
    ramp = i / max(num_steps - 1, 1)
    sigmas = (hi + ramp * (lo - hi)) ** cfg.rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


# guide(x, sigma, step_index, num_steps) -> x: moves the sample before each sampler step
Guide = Callable[[Tensor, Tensor, int, int], Tensor]


def churn_gammas(sigmas: Tensor, sampler: SamplerConfig) -> Tensor:
    """gamma_i of each step i < N (zeros for the deterministic sampler)."""
    num_steps = len(sigmas) - 1
    if sampler.kind != "reference" or sampler.s_churn == 0:
        return torch.zeros(num_steps)
    gamma = min(sampler.s_churn / num_steps, math.sqrt(2) - 1)
    levels = sigmas[:-1]
    inside = (levels >= sampler.s_tmin) & (levels <= sampler.s_tmax)
    return torch.where(inside, gamma, 0.0)


@torch.no_grad()
def edm_sample(
    denoiser: nn.Module,
    shape: tuple[int, ...],
    sampler: SamplerConfig,
    cfg: EDMConfig,
    guide: Guide | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """EDM sampling from N(0, sigma_max^2 I): ``sampler.num_steps`` Heun steps, churned when
    ``sampler.kind`` is ``reference``; ``guide`` moves the sample before each step. The noise
    comes from the CPU ``generator`` on every ``device``, so a seed gives the same draws."""
    gammas = churn_gammas(karras_sigmas(sampler.num_steps, cfg), sampler)
    sigmas = karras_sigmas(sampler.num_steps, cfg).to(device)
    x = sigmas[0] * torch.randn(shape, generator=generator).to(device)
    for i in range(sampler.num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if guide is not None:
            x = guide(x, sigma, i, sampler.num_steps)
        if gammas[i] > 0:
            sigma_hat = sigma * (1 + gammas[i])
            eps = torch.randn(shape, generator=generator).to(device)
            x = x + (sigma_hat**2 - sigma**2).sqrt() * sampler.s_noise * eps
            sigma = sigma_hat
        slope = (x - denoiser(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if sigma_next > 0:  # Heun's correction, except on the final step to sigma = 0
            slope_next = (x_next - denoiser(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        x = x_next
    return x
