"""``robopolicy synth generate`` and ``robopolicy synth inspect``: sample a trained trajectory
model (optionally guided by a target policy) and compare the result with the real data.

The target policy is named by a path and loaded by the ``load_policy`` its caller hands in (the
command line passes ``offline.agents.load_offline_agent``): guidance needs only the
``TargetPolicy`` protocol, and ``synth/`` stays below the offline RL that uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robopolicy.checkpoint import resolve_checkpoint
from robopolicy.data.hdf5 import make_env_args, write_dataset
from robopolicy.device import resolve_device
from robopolicy.files import atomic_write_json
from robopolicy.synth.config import SamplerConfig, validate_sampler
from robopolicy.synth.generate import generate, inspect_synthetic
from robopolicy.synth.guidance import TargetPolicy
from robopolicy.synth.model import load_trajectory_model
from robopolicy.synth.offline_data import episode, load_offline_data
from robopolicy.synth.pool import to_transitions


@dataclass
class GenerateConfig:
    model: str = "???"  # a `robopolicy synth train` run or checkpoint
    trajectories: int = 256
    policy: str | None = None  # a `robopolicy offline` checkpoint: the target policy
    guidance: float = 0.0  # lambda, in the units of `sampler` (synth/guidance.py; needs policy)
    dataset: str | None = None  # the real data to compare with (default: the model's)
    out: str | None = None  # generate: an HDF5 dataset of the synthetic trajectories
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda[:N]: where the model samples
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def run_generate(
    cfg: GenerateConfig, write: bool, load_policy: Callable[[str], TargetPolicy]
) -> dict[str, Any]:
    """Sample ``cfg.trajectories`` and write the report (and, with ``write``, the dataset);
    ``load_policy`` turns ``cfg.policy`` into the target policy."""
    validate_sampler(cfg.sampler)
    model_path = resolve_checkpoint(cfg.model)
    model, model_config = load_trajectory_model(model_path)
    model.to(resolve_device(cfg.device))
    policy = load_policy(cfg.policy) if cfg.policy else None
    data = load_offline_data(cfg.dataset or model_config["synth"]["dataset"])
    raw = generate(model, cfg.trajectories, cfg.sampler, policy, cfg.guidance, cfg.seed)
    report = {
        "model": str(model_path),
        "policy": cfg.policy,
        "guidance": cfg.guidance,
        **inspect_synthetic(raw, model, data, policy),
    }
    out_dir = model_path.parent.parent
    tag = f"guided{cfg.guidance:g}" if cfg.guidance > 0 else "unguided"
    report_path = atomic_write_json(out_dir / f"inspect-{tag}-seed{cfg.seed}.json", report)
    report["report"] = str(report_path)
    if write:
        out = Path(cfg.out or out_dir / f"synthetic-{tag}-seed{cfg.seed}.hdf5")
        episodes = _as_episodes(raw, model.layout)
        env_args = make_env_args(data.env_id, data.env_kwargs)
        report["out"] = str(write_dataset(out, episodes, env_args))
    return report


def _as_episodes(raw, layout) -> list:
    """Each synthetic trajectory as one dataset episode (cut after a generated terminal)."""
    episodes = []
    for trajectory in raw:
        t = to_transitions(trajectory[None], layout)
        if len(t["obs"]) == 0:
            continue
        terminal = bool(t["terminals"][-1])
        episodes.append(
            episode(
                t["obs"].numpy(),
                t["actions"].numpy(),
                t["rewards"].numpy(),
                t["next_obs"].numpy(),
                terminal,
            )
        )
    if not episodes:
        raise ValueError("no synthetic trajectory produced a transition")
    return episodes


def summary(report: dict[str, Any]) -> str:
    dyn = report["dynamics"]
    lik = report.get("target_log_likelihood")
    dynamics = (
        f"next-state MSE {dyn['next_state_mse']:.4f}, reward MSE {dyn['reward_mse']:.4f}"
        if dyn
        else "no dynamics error (state not recoverable from observations)"
    )
    return (
        f"{report['trajectories']} trajectories -> {report['transitions']} transitions; "
        f"{dynamics}, terminal rate {report['terminal_rate']:.3f} "
        f"(real {report['real_terminal_rate']:.3f})"
        + (f", target log-lik {lik:.2f}" if lik is not None else "")
        + f" -> {report['report']}"
        + (f"; data {report['out']}" if "out" in report else "")
    )
