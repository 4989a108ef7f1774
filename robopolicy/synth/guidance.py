"""Policy guidance: push the sampled actions toward what the target policy would do.

Before sampler step i of N the action block of every trajectory moves by

    a <- a + lambda_i * g,   g = grad_a sum_t log pi(tanh(a_t) | s_t)

(or by lambda_i * g / (||g|| + 1e-8) with ``guide.normalize``, ||g|| over one trajectory's whole
action block), where ``a`` are the model-space (arctanh, standardised) actions and the policy
sees the raw state and the raw action. This is the PGD reference's rule, normalisation off by
default as there; the reference wrote ``g / ||g|| + 1e-8``, which adds 1e-8 to every entry
instead of guarding the division. The gradient is taken on the noisy sample or, with
``guide.target: denoised``, on the denoiser's estimate D(x; sigma_i) (the gradient with respect
to the estimate's actions, not through the denoiser), and the push is added to the noisy sample
either way. The weight is

    sine:     lambda_i = lambda [(1 - i/N) + c sin(pi (i + 1) / N)]    (reference: c = 0.3)
    constant: lambda_i = lambda

for delay_steps <= i < N - 1, and 0 otherwise: strong while the sample is mostly noise,
gentle as it settles, none on the last step. Because the push is per step, the total push
(sum_i lambda_i, about 0.69 N lambda for the sine schedule) grows with the step count: a lambda
means the reference's lambda only with the reference's 256 steps. Observations are not guided.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

from robopolicy.synth.config import GuideConfig
from robopolicy.synth.trajectories import RowLayout, RowNormalizer

NORM_EPS = 1e-8


class TargetPolicy(Protocol):
    """All that guidance asks of the policy being trained: offline/'s agents have it, and
    synth/ needs no import of them (offline RL sits above the synthetic data it draws)."""

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """log pi(a | s) for raw (..., obs_dim) states and (..., action_dim) actions in [-1, 1]."""
        ...


def guidance_schedule(
    coefficient: float, step: int, num_steps: int, guide: GuideConfig | None = None
) -> float:
    """lambda_i of sampler step ``step`` of ``num_steps``."""
    guide = guide or GuideConfig()
    if step < guide.delay_steps or step >= num_steps - 1:
        return 0.0
    if guide.schedule == "constant":
        return coefficient
    ramp = 1 - step / num_steps
    return coefficient * (ramp + guide.sine_weight * math.sin(math.pi * (step + 1) / num_steps))


def action_log_likelihood(
    x: Tensor, policy: TargetPolicy, layout: RowLayout, normalizer: RowNormalizer
) -> Tensor:
    """sum_t log pi(a_t | s_t) per trajectory (B,), for model-space trajectories x (B, L, F).
    The policy runs where its weights are (the model may sample on a GPU while the agent trains
    on the CPU); gradients flow back to x's device."""
    raw = normalizer.unnormalize(x).to(_policy_device(policy, x))
    obs = raw[..., : layout.obs_dim]
    actions = torch.tanh(raw[..., layout.actions])
    return policy.log_prob(obs, actions).sum(dim=-1)


def _policy_device(policy: TargetPolicy, x: Tensor) -> torch.device:
    """The device of the policy's weights, or x's for a policy without any."""
    if isinstance(policy, nn.Module):
        weights = next(iter(policy.parameters()), None)
        if weights is not None:
            return weights.device
    return x.device


class PolicyGuide:
    """The ``guide`` hook of ``edm_sample`` for one target policy and coefficient.
    ``denoiser`` is needed only for ``guide.target: denoised``."""

    def __init__(
        self,
        policy: TargetPolicy,
        coefficient: float,
        layout: RowLayout,
        normalizer: RowNormalizer,
        guide: GuideConfig | None = None,
        denoiser: nn.Module | None = None,
    ) -> None:
        self.options = guide or GuideConfig()
        if self.options.target == "denoised" and denoiser is None:
            raise ValueError("guide.target 'denoised' needs the denoiser")
        self.policy = policy
        self.coefficient = coefficient
        self.layout = layout
        self.normalizer = normalizer
        self.denoiser = denoiser

    def gradient(self, x: Tensor) -> Tensor:
        """g on the action block of x (normalised per trajectory with ``normalize``), zeros
        elsewhere."""
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
        if self.options.normalize:
            grad = grad / (grad.flatten(1).norm(dim=1)[:, None, None] + NORM_EPS)
        step = torch.zeros_like(x)
        step[..., self.layout.actions] = grad
        return step

    def __call__(self, x: Tensor, sigma: Tensor, step: int, num_steps: int) -> Tensor:
        weight = guidance_schedule(self.coefficient, step, num_steps, self.options)
        if weight == 0.0:
            return x
        at = x
        if self.options.target == "denoised":
            with torch.no_grad():
                at = self.denoiser(x, sigma)
        return x + weight * self.gradient(at)
