"""``robopolicy bench bc``: BC policies trained and evaluated side by side.

For each configured run: collect its dataset if missing, train with ``train_bc``, evaluate the
final EMA weights on >= 50 seeded episodes (Wilson interval), and measure training speed
(samples/s), the share of each step spent waiting for data, and inference latency per chunk
(batch 1, p50/p95) with its number of network evaluations.

With ``executor=ray`` the trainings are Ray tasks (datasets are collected here first, so two
runs never write one file); the per-backbone speed table stays in this process. Speed figures
of runs side by side on one machine are then slower than alone: the report says so.
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
from omegaconf import OmegaConf  # noqa: E402

from robopolicy.bench.jobs import failure_lines, run_jobs, run_resources
from robopolicy.bench.report import (
    machine_info,
    machine_line,
    markdown_table,
    new_run_dir,
    write_results,
)
from robopolicy.checkpoint import load_policy
from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.distributed import RayConfig
from robopolicy.distributed.executor import Job, make_executor
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
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # local: one training after the other here; ray: as Ray tasks
    ray: RayConfig = field(default_factory=RayConfig)


def run(cfg: Config) -> dict[str, Any]:
    executor = make_executor(cfg.executor, cfg.ray)  # checked, and joined, before any work
    out = new_run_dir(cfg.out_root, "bc")
    results: dict[str, Any] = {"suite": "bc", "machine": machine_info(), "runs": {}}
    results["executor"] = cfg.executor
    print("[bench bc] speed per backbone")
    device = torch.device(cfg.device)
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results["speed"] = backbone_speed(cfg.speed_steps, cfg.latency_repeats, device)
    specs = [r for r in cfg.runs if not cfg.only or r.name in cfg.only]
    jobs = [_job(spec, cfg, out) for spec in specs]
    entries = {"bc": results}

    def save() -> None:  # keep what is done if a later run fails
        write_results(out, results, _report(results))

    run_jobs("bc", executor, jobs, entries, save)
    _plot(results, out)
    print(f"[bench bc] wrote {out}/report.md")
    for name, r in results["runs"].items():
        low, high = r["success_ci95"]
        print(
            f"  {name}: success {r['success_rate']:.0%} [{low:.0%}, {high:.0%}] n={r['n']}, "
            f"{r['steps']} steps in {r['train_minutes']:.1f} min"
        )
    return results


def _job(spec: BCRun, cfg: Config, out: Path) -> Job:
    """One training of the bench as an executor job; its dataset collected here first."""
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
    num_gpus, train_cfg.optim.num_threads = run_resources(
        cfg.executor, cfg.ray, train_cfg.optim.device, train_cfg.optim.num_threads
    )
    args = (spec.train_config, list(spec.overrides), OmegaConf.to_yaml(train_cfg), cfg.device)
    return Job(
        f"bc/{spec.name}",
        _one_run,
        (*args, cfg.latency_repeats),
        num_cpus=cfg.ray.num_cpus,
        num_gpus=num_gpus,
    )


def _one_run(
    train_config: str, overrides: list[str], config_yaml: str, device: str, latency_repeats: int
) -> dict[str, Any]:
    """One training of the bench (here or on a Ray worker), then its row."""
    train_cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(config_yaml))
    run_dir = Path(train_cfg.run_dir)
    start = time.perf_counter()
    result = train_bc(train_cfg)
    minutes = (time.perf_counter() - start) / 60
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/samples_per_s" in r]
    summary = result["eval"]
    return {
        "train_config": train_config,
        "overrides": overrides,
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
        **_chunk_latency(load_policy(result["checkpoint"]).to(device), latency_repeats),
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
            f"{machine_line(m)} Eval seeds start at 100000; latency is one chunk "
            f"at batch 1, speed and latency on {results.get('device', 'cpu')}.",
            "",
            markdown_table(headers, rows),
            "",
            *(
                [
                    "Trained as Ray tasks (`executor=ray`): runs side by side share their "
                    "machine, so their minutes and samples/s are slower than one run alone.",
                    "",
                ]
                if results.get("executor") == "ray"
                else []
            ),
            *failure_lines({"bc": results}),
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
