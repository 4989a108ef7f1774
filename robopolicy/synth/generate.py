"""Generating synthetic trajectories (guided or not) and measuring what came out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from robopolicy.synth.config import SamplerConfig
from robopolicy.synth.dynamics import dynamics_error
from robopolicy.synth.guidance import PolicyGuide, TargetPolicy
from robopolicy.synth.model import TrajectoryModel
from robopolicy.synth.offline_data import OfflineData
from robopolicy.synth.pool import to_transitions
from robopolicy.synth.trajectories import dataset_rows


def generate(
    model: TrajectoryModel,
    num: int,
    sampler: SamplerConfig,
    policy: TargetPolicy | None = None,
    guidance: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """``num`` raw (unnormalised) trajectories (num, length, width), policy-guided when
    ``guidance`` > 0 (lambda in the units of ``sampler``'s kind and step count: see guidance.py)."""
    if guidance > 0 and policy is None:
        raise ValueError("guidance > 0 needs a target policy")
    guide = (
        PolicyGuide(policy, guidance, model.layout, model.normalizer, sampler.guide, model.denoiser)
        if policy is not None and guidance > 0
        else None
    )
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for begin in range(0, num, sampler.batch_size):
        size = min(sampler.batch_size, num - begin)
        x = model.sample(size, sampler, guide, generator)
        parts.append(model.normalizer.unnormalize(x).cpu())
    return torch.cat(parts)


@torch.no_grad()
def mean_log_likelihood(policy: TargetPolicy, transitions: dict[str, Tensor]) -> float:
    """The target policy's mean log pi(a | s) over synthetic (or real) transitions."""
    return float(policy.log_prob(transitions["obs"], transitions["actions"]).mean())


def inspect_synthetic(
    raw_rows: Tensor,
    model: TrajectoryModel,
    data: OfflineData,
    policy: TargetPolicy | None = None,
    dynamics_limit: int = 2000,
) -> dict[str, Any]:
    """How synthetic data compares with the real data: feature statistics (in units of the
    real std), terminal rate, rewards, dynamics error, and the target policy's likelihood."""
    transitions = to_transitions(raw_rows, model.layout)
    real_rows = torch.as_tensor(dataset_rows(data))
    synth_rows = raw_rows.reshape(-1, raw_rows.shape[-1])
    std = real_rows.std(dim=0).clamp_min(1e-6)
    report: dict[str, Any] = {
        "trajectories": int(raw_rows.shape[0]),
        "transitions": int(transitions["obs"].shape[0]),
        "terminal_rate": float(transitions["terminals"].float().mean()),
        "real_terminal_rate": float(np.mean(data.terminals)),
        "reward_mean": float(transitions["rewards"].mean()),
        "real_reward_mean": float(np.mean(data.rewards)),
        "feature_mean_gap_std": float(
            ((synth_rows.mean(dim=0) - real_rows.mean(dim=0)).abs() / std).mean()
        ),
        "feature_std_ratio": float((synth_rows.std(dim=0) / std).mean()),
        # None where the task's state cannot be rebuilt from its observation
        "dynamics": dynamics_error(data.env_id, data.env_kwargs, transitions, dynamics_limit),
    }
    if policy is not None:
        report["target_log_likelihood"] = mean_log_likelihood(policy, transitions)
    return report
