"""``robopolicy bench bc``: BC policies trained and evaluated side by side.

For each configured run: collect its dataset if missing, train with ``train_bc``, evaluate the
final EMA weights on >= 50 seeded episodes (Wilson interval), and measure training speed
(samples/s), the share of each step spent waiting for data, and inference latency per chunk
(batch 1, p50/p95) with its number of network evaluations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import machine_info, markdown_table, new_run_dir, write_results
from robopolicy.checkpoint import load_policy
from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.files import atomic_save_figure
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig


@dataclass
class BCRun:
    name: str
    train_config: str  # relative to configs/
    collect_config: str  # relative to configs/; run when the dataset is missing
    overrides: list[str] = field(default_factory=list)


@dataclass
class Config:
    runs: list[BCRun] = field(default_factory=list)
    only: list[str] = field(default_factory=list)  # run names to run (empty: all)
    eval_episodes: int = 50
    latency_repeats: int = 50
    speed_steps: int = 20  # training steps timed per backbone in the speed table
    device: str = "cpu"  # speed table and chunk latency: cpu | cuda (training follows optim.device)
    out_root: str = "runs/bench"
    executor: str = "local"  # this suite times things: local only (bench.jobs.local_only)


def run(cfg: Config) -> dict[str, Any]:
    local_only(cfg.executor, "bc")
    out = new_run_dir(cfg.out_root, "bc")
    results: dict[str, Any] = {"suite": "bc", "machine": machine_info(), "runs": {}}
    print("[bench bc] speed per backbone")
    device = torch.device(cfg.device)
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results["speed"] = backbone_speed(cfg.speed_steps, cfg.latency_repeats, device)
    runs = [r for r in cfg.runs if not cfg.only or r.name in cfg.only]
    for spec in runs:
        print(f"[bench bc] {spec.name}")
        results["runs"][spec.name] = _one_run(spec, cfg, out)
        write_results(out, results, _report(results))  # keep what is done if a later run fails
    _plot(results, out)
    print(f"[bench bc] wrote {out}/report.md")
    for name, r in results["runs"].items():
        low, high = r["success_ci95"]
        print(
            f"  {name}: success {r['success_rate']:.0%} [{low:.0%}, {high:.0%}] n={r['n']}, "
            f"{r['steps']} steps in {r['train_minutes']:.1f} min"
        )
    return results


def _one_run(spec: BCRun, cfg: Config, out: Path) -> dict[str, Any]:
    train_cfg = load_config(
        CONFIG_DIR / spec.train_config,
        TrainConfig,
        [
            *spec.overrides,
            f"run_dir={out / spec.name}",
            f"loop.final_eval_episodes={cfg.eval_episodes}",
        ],
    )
    if not Path(train_cfg.task.dataset).exists():
        collect_cfg = load_config(
            CONFIG_DIR / spec.collect_config, CollectConfig, [f"output={train_cfg.task.dataset}"]
        )
        collect(collect_cfg)
    start = time.perf_counter()
    result = train_bc(train_cfg)
    minutes = (time.perf_counter() - start) / 60
    rows = [json.loads(x) for x in (out / spec.name / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/samples_per_s" in r]
    summary = result["eval"]
    return {
        "train_config": spec.train_config,
        "overrides": list(spec.overrides),
        "dataset": train_cfg.task.dataset,
        "obs_type": train_cfg.task.env_kwargs.get("obs_type", "state"),
        "policy": f"{train_cfg.policy.type}-{train_cfg.policy.backbone}",
        "steps": result["steps"],
        "batch_size": train_cfg.optim.batch_size,
        "train_minutes": minutes,
        "samples_per_s": float(np.median([r["train/samples_per_s"] for r in train_rows])),
        "data_wait_share": float(np.median([r["train/data_wait_share"] for r in train_rows])),
        "success_rate": summary["success_rate"],
        "success_ci95": summary["success_ci95"],
        "n": summary["n_episodes"],
        "seeds": f"{summary['seeds'][0]}..{summary['seeds'][-1]}",
        "checkpoint": result["checkpoint"],
        **_chunk_latency(load_policy(result["checkpoint"]).to(cfg.device), cfg.latency_repeats),
    }


def backbone_speed(steps: int, repeats: int, device: torch.device) -> dict[str, Any]:
    """Training samples/s (batch 256) and chunk latency (batch 1) of every policy type and
    backbone at the shipped CPU sizes, on Lift's observation and action shapes. Speed does not
    depend on the weights, so no training to convergence is needed to measure it."""
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy

    shapes = PolicyShapes(
        obs={"object": [10], "robot0_eef_pos": [3], "robot0_gripper_qpos": [2]},
        action_dim=4,
        control_hz=20.0,
    )
    data = {key: torch.randn(512, dims[0]) for key, dims in shapes.obs.items()}
    normalizer = Normalizer.fit({**data, "actions": torch.rand(512, 4) * 2 - 1})
    out = {}
    for policy_type in ("diffusion", "flow"):
        for backbone in ("unet", "mlp"):
            torch.manual_seed(0)
            policy = make_policy(
                PolicyConfig(type=policy_type, backbone=backbone), shapes, normalizer
            ).to(device)
            batch = {
                "obs": {k: torch.randn(256, 2, v[0], device=device) for k, v in shapes.obs.items()},
                "actions": torch.rand(256, 16, 4, device=device) * 2 - 1,
            }
            optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4)
            policy.train()
            times = []
            for i in range(steps + 2):
                start = time.perf_counter()
                loss = policy.compute_loss(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                _synchronize(device)
                if i >= 2:
                    times.append(time.perf_counter() - start)
            out[f"{policy_type}-{backbone}"] = {
                "samples_per_s": 256 / float(np.median(times)),
                **_chunk_latency(policy.eval(), repeats),
            }
    return out


def _synchronize(device: torch.device) -> None:
    """CUDA runs asynchronously: wait for the queued kernels before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chunk_latency(policy, repeats: int) -> dict[str, Any]:
    """Time of one chunk (batch 1) on this machine, and its network evaluations."""
    device = next(policy.parameters()).device
    obs = {}
    for key, shape in policy.shapes.obs.items():
        full = (1, policy.obs_horizon, *shape)
        obs[key] = (
            torch.randint(0, 255, full, dtype=torch.uint8, device=device)
            if len(shape) == 3
            else torch.zeros(full, device=device)
        )
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        policy.predict_chunk(obs)
        _synchronize(device)
        if i >= 3:  # warm-up calls excluded
            times.append(1e3 * (time.perf_counter() - start))
    return {
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "network_evals_per_chunk": policy.network_evaluations(),
        "parameters": sum(p.numel() for p in policy.parameters()),
    }


def _plot(results: dict[str, Any], out: Path) -> None:
    names = list(results["runs"])
    if not names:
        return
    rates = np.array([results["runs"][n]["success_rate"] for n in names])
    ci = np.array([results["runs"][n]["success_ci95"] for n in names])
    err = np.clip(np.stack([rates - ci[:, 0], ci[:, 1] - rates]), 0, 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    ax.bar(np.arange(len(names)), rates, yerr=err, capsize=4, color="tab:blue")
    ax.set(ylim=(0, 1.05), ylabel="success rate", title="BC success (Wilson 95% CI)")
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, out / "bc.png", dpi=110)
    plt.close(fig)


def _report(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = []
    for name, r in results["runs"].items():
        low, high = r["success_ci95"]
        rows.append(
            [
                name,
                r["policy"],
                r["obs_type"],
                Path(r["dataset"]).name,
                f"{r['success_rate']:.0%}",
                f"[{low:.0%}, {high:.0%}]",
                r["n"],
                r["steps"],
                f"{r['train_minutes']:.1f}",
                f"{r['samples_per_s']:.0f}",
                f"{r['data_wait_share']:.1%}",
                f"{r['latency_ms_p50']:.1f} / {r['latency_ms_p95']:.1f}",
                r["network_evals_per_chunk"],
                f"{r['parameters'] / 1e6:.2f}M",
            ]
        )
    headers = [
        "run",
        "policy",
        "obs",
        "data",
        "success",
        "Wilson 95%",
        "n",
        "steps",
        "train min",
        "samples/s",
        "data wait",
        "chunk ms p50/p95",
        "NFE",
        "params",
    ]
    speed_rows = [
        [
            name,
            f"{v['samples_per_s']:.0f}",
            f"{v['latency_ms_p50']:.1f} / {v['latency_ms_p95']:.1f}",
            v["network_evals_per_chunk"],
            f"{v['parameters'] / 1e6:.2f}M",
        ]
        for name, v in results.get("speed", {}).items()
    ]
    return "\n".join(
        [
            "# Benchmark: bc",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}; commit "
            f"{m['git_commit']}; {m['date']}. Eval seeds start at 100000; latency is one chunk "
            f"at batch 1, speed and latency on {results.get('device', 'cpu')}.",
            "",
            markdown_table(headers, rows),
            "",
            "![bc](bc.png)",
            "",
            "## Speed per backbone (Lift shapes, shipped CPU sizes, batch 256 / batch 1)",
            "",
            markdown_table(
                ["policy", "train samples/s", "chunk ms p50/p95", "NFE", "params"], speed_rows
            ),
            "",
        ]
    )
