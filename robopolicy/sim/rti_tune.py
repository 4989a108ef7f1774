"""``robopolicy rti-tune CHECKPOINT``: choose RTI's K' for a checkpoint by measured success.

Evaluates the closed-loop reference (the full trained chain re-planned at every step) and RTI
with each candidate K' on the same seeds, and picks the smallest K' whose success is within
``tolerance`` of the reference. The choice and the table go to ``<run>/rti-tune.json``; run
the policy with it through ``execution.mode=rti execution.rti_start_step=K'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from robopolicy.checkpoint import checkpoint_run, load_policy, resolve_checkpoint
from robopolicy.config import ConfigError
from robopolicy.files import atomic_write_json
from robopolicy.inference.execution import ExecutionConfig
from robopolicy.sim.schemes import compare_schemes
from robopolicy.threads import set_num_threads


@dataclass
class RTITuneConfig:
    checkpoint: str = MISSING
    candidates: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])
    sampler: str | None = None  # None: diffusion runs the trained DDPM chain (RTI-DP); flow
    # has no sampler to choose (its Euler grid is num_inference_steps)
    num_inference_steps: int | None = None  # None: every trained timestep
    tolerance: float = 0.05  # success may drop this much below the reference
    n_episodes: int = 50
    seed: int = 100_000
    num_envs: int = 8
    latency_episodes: int = 2
    out: str | None = None  # default: <run>/rti-tune.json (required outside a run)
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)


def run_rti_tune(cfg: RTITuneConfig) -> dict[str, Any]:
    set_num_threads(cfg.num_threads)
    path = resolve_checkpoint(cfg.checkpoint)
    run = checkpoint_run(path)
    if cfg.out is None and run is None:  # fail before the episodes, not after
        raise ConfigError(
            f"rti-tune: {path} is not inside a run's checkpoints/ folder: set out= for the result"
        )
    policy = load_policy(path)
    steps = cfg.num_inference_steps or policy.cfg.num_train_timesteps
    bad = [k for k in cfg.candidates if not 1 <= k <= steps]
    if bad or not cfg.candidates:
        raise ValueError(f"rti-tune: candidates {list(cfg.candidates)} must lie in [1, {steps}]")
    sampler = cfg.sampler or ("ddpm" if policy.cfg.type == "diffusion" else None)
    common = {"sampler": sampler, "num_inference_steps": steps}
    schemes = {"reference": ExecutionConfig(mode="chunked", action_horizon=1, **common)}
    for k in sorted(cfg.candidates):
        schemes[f"rti_k{k}"] = ExecutionConfig(mode="rti", rti_start_step=k, **common)
    rows = compare_schemes(
        str(path),
        schemes,
        n_episodes=cfg.n_episodes,
        seed=cfg.seed,
        num_envs=cfg.num_envs,
        latency_episodes=cfg.latency_episodes,
    )
    floor = rows["reference"]["success_rate"] - cfg.tolerance
    holding = [k for k in sorted(cfg.candidates) if rows[f"rti_k{k}"]["success_rate"] >= floor]
    chosen = holding[0] if holding else None
    result = {
        "checkpoint": str(path),
        "sampler": sampler,
        "num_inference_steps": steps,
        "tolerance": cfg.tolerance,
        "chosen_start_step": chosen,
        "rows": rows,
    }
    out = Path(cfg.out) if cfg.out else run / "rti-tune.json"
    atomic_write_json(out, result)
    return {**result, "out": str(out)}


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in result["rows"].items():
        low, high = row["success_ci95"]
        lines.append(
            f"  {name:10s} {row['scheme']:24s} success {row['success_rate']:.0%} "
            f"[{low:.0%}, {high:.0%}]  {row['network_evaluations_per_action']:.2f} NFE/action  "
            f"p50 {row['latency_ms_p50']:.2f} ms"
        )
    k = result["chosen_start_step"]
    if k is None:
        lines.append("no K' holds the reference's success within the tolerance")
    else:
        sampler = f"execution.sampler={result['sampler']} " if result["sampler"] else ""
        lines.append(
            f"chosen K' = {k}: robopolicy eval {result['checkpoint']} execution.mode=rti "
            f"{sampler}execution.num_inference_steps={result['num_inference_steps']} "
            f"execution.rti_start_step={k}"
        )
    lines.append(f"wrote {result['out']}")
    return lines
