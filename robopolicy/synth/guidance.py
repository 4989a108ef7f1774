"""Policy guidance: push the sampled actions toward what the target policy would do.

Before sampler step i of N the action block of every trajectory moves by

    a <- a + lambda_i * g / (||g|| + 1e-8),   g = grad_a sum_t log pi(tanh(a_t) | s_t)

where ``a`` are the model-space (arctanh, standardised) actions, the policy sees the raw state
and the raw action, and ||g|| is taken over one trajectory's whole action block. (The
reference code wrote ``g / ||g|| + 1e-8``, which adds 1e-8 to every entry instead of guarding
the division.) The schedule is

    lambda_i = lambda [(1 - i/N) + 0.3 sin(pi (i + 1) / N)],  and 0 at the last step,

strong while the sample is mostly noise, gentle as it settles. Observations are not guided.
The gradient is taken on the noisy sample, as the reference does by default.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from robopolicy.synth.trajectories import RowLayout, RowNormalizer

GUIDANCE_SINE_WEIGHT = 0.3
NORM_EPS = 1e-8


class TargetPolicy(Protocol):
    """All that guidance asks of the policy being trained: offline/'s agents have it, and
    synth/ needs no import of them (offline RL sits above the synthetic data it draws)."""

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log pi(a | s) for raw (..., obs_dim) states and (..., action_dim) actions in [-1, 1]."""
        ...


def guidance_schedule(coefficient: float, step: int, num_steps: int) -> float:
    if step >= num_steps - 1:
        return 0.0
    frac = step / num_steps
    return coefficient * (
        (1 - frac) + GUIDANCE_SINE_WEIGHT * math.sin(math.pi * (step + 1) / num_steps)
    )


def action_log_likelihood(
    x: Tensor, policy: TargetPolicy, layout: RowLayout, normalizer: RowNormalizer
) -> Tensor:
    """sum_t log pi(a_t | s_t) per trajectory (B,), for model-space trajectories x (B, L, F)."""
    raw = normalizer.unnormalize(x)
    obs = raw[..., : layout.obs_dim]
    actions = torch.tanh(raw[..., layout.actions])
    return policy.log_prob(obs, actions).sum(dim=-1)


class PolicyGuide:
    """The ``guide`` hook of ``heun_sample`` for one target policy and coefficient."""

    def __init__(
        self,
        policy: TargetPolicy,
        coefficient: float,
        layout: RowLayout,
        normalizer: RowNormalizer,
    ) -> None:
        self.policy = policy
        self.coefficient = coefficient
        self.layout = layout
        self.normalizer = normalizer

    def direction(self, x: Tensor) -> Tensor:
        """g / (||g|| + eps) on the action block of x, zeros elsewhere."""
        with torch.enable_grad():
            actions = x[..., self.layout.actions].detach().requires_grad_(True)
            rows = torch.cat(
                [
                    x[..., : self.layout.obs_dim].detach(),
                    actions,
                    x[..., self.layout.reward :].detach(),
                ],
                dim=-1,
            )
            log_lik = action_log_likelihood(rows, self.policy, self.layout, self.normalizer)
            (grad,) = torch.autograd.grad(log_lik.sum(), actions)
        norm = grad.flatten(1).norm(dim=1)[:, None, None]
        step = torch.zeros_like(x)
        step[..., self.layout.actions] = grad / (norm + NORM_EPS)
        return step

    def __call__(self, x: Tensor, step: int, num_steps: int) -> Tensor:
        weight = guidance_schedule(self.coefficient, step, num_steps)
        if weight == 0.0:
            return x
        return x + weight * self.direction(x)
