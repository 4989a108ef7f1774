"""``robopolicy bench rti``: execution schemes side by side on the same checkpoints.

For each task: the checkpoint named in the config, or one trained with the task's BC config
(dataset collected if missing). Every scheme runs the same seeded episodes; the table gives
success (Wilson interval), network evaluations per executed action, and latency per action
at batch 1 (p50/p95).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import (
    machine_info,
    machine_line,
    markdown_table,
    new_run_dir,
    write_results,
)
from robopolicy.bench.training import train_checkpoint
from robopolicy.files import atomic_save_figure
from robopolicy.inference.execution import ExecutionConfig
from robopolicy.sim.schemes import compare_schemes


@dataclass
class RTITask:
    name: str
    checkpoint: str | None = None  # an existing checkpoint or run directory
    train_config: str | None = None  # relative to configs/; used when checkpoint is unset
    collect_config: str | None = None  # relative to configs/; run when the dataset is missing


@dataclass
class Config:
    tasks: list[RTITask] = field(default_factory=list)
    schemes: dict[str, ExecutionConfig] = field(default_factory=dict)
    reference: str = "ddpm100_every_step"  # the scheme RTI is compared against
    eval_episodes: int = 50
    num_envs: int = 8
    latency_episodes: int = 2
    out_root: str = "runs/bench"
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # this suite times things: local only (bench.jobs.local_only)


def run(cfg: Config) -> dict[str, Any]:
    local_only(cfg.executor, "rti")
    if cfg.reference not in cfg.schemes:
        raise ValueError(f"bench rti: reference {cfg.reference!r} is not one of the schemes")
    out = new_run_dir(cfg.out_root, "rti")
    results: dict[str, Any] = {"suite": "rti", "machine": machine_info(), "tasks": {}}
    for task in cfg.tasks:
        checkpoint = task.checkpoint or train_checkpoint(
            task.name, task.train_config, task.collect_config, out / task.name
        )
        print(f"[bench rti] {task.name}: {checkpoint}")
        rows = compare_schemes(
            checkpoint,
            dict(cfg.schemes),
            n_episodes=cfg.eval_episodes,
            num_envs=cfg.num_envs,
            latency_episodes=cfg.latency_episodes,
        )
        results["tasks"][task.name] = {"checkpoint": checkpoint, "rows": rows}
        write_results(out, results, _report(results, cfg.reference))
    _plot(results, out)
    print(f"[bench rti] wrote {out}/report.md")
    for name, task in results["tasks"].items():
        for scheme, r in task["rows"].items():
            print(
                f"  {name} {scheme}: success {r['success_rate']:.0%}, "
                f"{r['network_evaluations_per_action']:.2f} NFE/action, "
                f"p50 {r['latency_ms_p50']:.2f} ms"
            )
    return results


def _plot(results: dict[str, Any], out: Path) -> None:
    tasks = list(results["tasks"])
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, name in zip(axes[0], tasks, strict=True):
        rows = results["tasks"][name]["rows"]
        nfe = np.array([r["network_evaluations_per_action"] for r in rows.values()])
        rate = np.array([r["success_rate"] for r in rows.values()])
        ci = np.array([r["success_ci95"] for r in rows.values()])
        err = np.clip(np.stack([rate - ci[:, 0], ci[:, 1] - rate]), 0, 1)
        ax.errorbar(nfe, rate, yerr=err, fmt="o", capsize=3)
        for label, x, y in zip(rows, nfe, rate, strict=True):
            ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set(xscale="log", ylim=(0, 1.08), xlabel="network evaluations per action")
        ax.set(ylabel="success rate", title=f"{name}: success vs inference cost")
    fig.tight_layout()
    atomic_save_figure(fig, out / "rti.png", dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any], reference: str) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark: rti",
        "",
        f"{machine_line(m)} Success over seeded episodes (from 100000) with a "
        "Wilson 95% interval; latency per executed action at batch 1; NFE = denoiser passes "
        f"per executed action. Δ is success minus the reference ({reference}).",
        "",
    ]
    for name, task in results["tasks"].items():
        rows = task["rows"]
        ref = rows.get(reference)
        table = []
        for scheme, r in rows.items():
            low, high = r["success_ci95"]
            delta = f"{100 * (r['success_rate'] - ref['success_rate']):+.0f}" if ref else "—"
            table.append(
                [
                    scheme,
                    r["scheme"],
                    f"{r['success_rate']:.0%}",
                    f"[{low:.0%}, {high:.0%}]",
                    r["n"],
                    delta,
                    f"{r['network_evaluations_per_action']:.2f}",
                    f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p95']:.2f}",
                    f"{r['mean_episode_length']:.1f}",
                ]
            )
        headers = [
            "scheme",
            "sampler / execution",
            "success",
            "Wilson 95%",
            "n",
            "Δ pts",
            "NFE/action",
            "ms/action p50 / p95",
            "mean length",
        ]
        lines += [f"## {name}", "", f"Checkpoint: `{task['checkpoint']}`", ""]
        lines += [markdown_table(headers, table), ""]
    lines += ["![rti](rti.png)", ""]
    return "\n".join(lines)
