"""``robopolicy bench pgd``: does policy-guided synthetic data help offline RL?

For each offline dataset (made if missing, from its SAC source run, trained if missing) the
trajectory model is trained once, then each offline agent (``agents``: TD3+BC, IQL) runs with
the same budget in three arms per seed: real data only; + unguided synthetic data; +
policy-guided synthetic data, once per lambda of the agent's ``guidance`` grid. lambda is in the
units of the offline config's sampler: with the reference sampler (256 stochastic steps, the raw
gradient) it is the PGD reference's lambda. The grids differ by agent because the gradient of
log pi does: TD3+BC's actor is read as N(mu(s), 1), IQL's Gaussian learns a small std, so the
same lambda pushes IQL's samples far harder (measured: docs/benchmarks/pgd.md).

Reported: final normalised return (references from the dataset: a random policy and the source
run's final policy) per seed, each guided lambda's difference from real and from unguided (per
seed, paired), and, for each agent's guided final policy as the target, synthetic data sampled
unguided and at each lambda side by side: the target's log-likelihood of the synthetic actions
and the dynamics error (MuJoCo replay of each transition).

``scaling.*`` adds the dynamics-error table of trajectory models of a few sizes and training
budgets (``bench/pgd_scaling.py``); with ``arms: []`` it is all the bench runs
(``configs/bench/pgd_scaling.yaml``).

Two diagnostic arms can be added (``arms``): ``unguided_oracle`` and ``guided_oracle`` keep the
generated states and actions but take next state, reward and termination from the simulator,
separating the model's dynamics error from what guidance does to the state-action distribution.

``executor=ray`` runs each dataset's arms and seeds as Ray tasks (``ray.*`` as in
``bench residual``); a run that fails is reported and the others finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from robopolicy.bench.jobs import run_jobs, run_resources  # noqa: E402
from robopolicy.bench.pgd_report import ARM_ORDER, arm_groups, report
from robopolicy.bench.pgd_scaling import ScalingConfig, scaling_rows, validate_scaling
from robopolicy.bench.report import machine_info, new_run_dir, write_results
from robopolicy.config import CONFIG_DIR, load_config, to_dict
from robopolicy.device import resolve_device
from robopolicy.distributed import RayConfig
from robopolicy.distributed.executor import Job, make_executor
from robopolicy.files import atomic_save_figure
from robopolicy.offline.agents import load_offline_agent
from robopolicy.offline.config import OfflineConfig
from robopolicy.offline.train import train_offline
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.synth.config import SynthConfig
from robopolicy.synth.generate import generate, inspect_synthetic, mean_log_likelihood
from robopolicy.synth.make_data import OfflineDataConfig, make_offline_data
from robopolicy.synth.model import load_trajectory_model
from robopolicy.synth.offline_data import load_offline_data

ARM_STYLES = {  # every arm (in the report's order), with its colour and line style in the plot
    "real": ("tab:grey", "-"),
    "unguided": ("tab:blue", "-"),
    "guided": ("tab:red", "-"),
    "unguided_oracle": ("tab:blue", "--"),
    "guided_oracle": ("tab:red", "--"),
}
ARMS = ARM_ORDER
DEFAULT_ARMS = ARMS[:3]
AGENTS = ("td3bc", "iql")


@dataclass
class Dataset:
    name: str
    data_config: str  # relative to configs/: `robopolicy offline-data` (run if output missing)
    synth_config: str  # relative to configs/: the trajectory model (trained unless `model`)
    offline_config: str  # relative to configs/: the agent and its budget
    model: str | None = None  # an existing trajectory-model run (skips training)


@dataclass
class Config:
    suite: str = "pgd"
    datasets: list[Dataset] = field(default_factory=list)
    only: list[str] = field(default_factory=list)  # dataset names (empty: all)
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    agents: list[str] = field(default_factory=lambda: list(AGENTS))  # agent.algo of each run
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # agent -> lambdas of its guided arms, in the offline config's sampler units (reference
    # sampler: the PGD reference's lambda; the total push per action entry is ~177 lambda g)
    guidance: dict[str, list[float]] = field(
        default_factory=lambda: {"td3bc": [0.1, 0.3, 1.0], "iql": [0.003, 0.01, 0.03]}
    )
    steps: int | None = None  # agent steps (None: the offline config's)
    check_trajectories: int = 256  # unguided vs each guided lambda, sampled at the end
    scaling: ScalingConfig = field(default_factory=ScalingConfig)  # dynamics-error table
    overrides: list[str] = field(default_factory=list)  # applied to every offline run
    synth_overrides: list[str] = field(default_factory=list)  # applied to model training
    out_root: str = "runs/bench"
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # local: the runs one after the other here; ray: as Ray tasks
    ray: RayConfig = field(default_factory=RayConfig)


def validate(cfg: Config) -> None:
    unknown = sorted(set(cfg.arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    agents = sorted(set(cfg.agents) - set(AGENTS))
    if agents or not cfg.agents:
        raise ValueError(f"agents {cfg.agents} must be a non-empty subset of {list(AGENTS)}")
    guided = any(arm.startswith("guided") for arm in cfg.arms)
    for agent in cfg.agents if guided else []:
        grid = cfg.guidance.get(agent)
        if not grid or min(grid) <= 0:
            raise ValueError(
                f"the guided arms need guidance.{agent}: a grid of lambdas > 0, got {grid}"
            )
    validate_scaling(cfg.scaling)


def run(cfg: Config) -> dict[str, Any]:
    validate(cfg)
    executor = make_executor(cfg.executor, cfg.ray)  # checked, and joined, before any work
    out = new_run_dir(cfg.out_root, cfg.suite)
    results: dict[str, Any] = {
        "suite": cfg.suite,
        "machine": machine_info(),
        "settings": {
            k: to_dict(cfg)[k]
            for k in ("arms", "agents", "seeds", "guidance", "steps", "overrides", "scaling")
        },
        "datasets": {},
        "scaling": [],
    }
    for ds in [d for d in cfg.datasets if not cfg.only or d.name in cfg.only]:
        data_path = _ensure_dataset(ds)
        if cfg.scaling.down_dims:
            results["scaling"] += scaling_rows(
                cfg.scaling, ds.name, ds.synth_config, data_path, out
            )
            write_results(out, results, report(results))
        model = None  # no arms (a scaling table alone): no bench model to train
        if cfg.arms:
            model = ds.model or _train_model(ds, data_path, out, cfg.synth_overrides)
        data = load_offline_data(data_path)
        entry: dict[str, Any] = {
            "dataset": data_path,
            "model": str(model) if model else None,
            "references": data.references,
            "transitions": len(data.actions),
            "dataset_return": float(np.mean(data.episode_returns())),
            "runs": {},
        }
        results["datasets"][ds.name] = entry
        jobs = [
            _run_job(cfg, ds, data_path, model, agent, arm, guidance, seed, out / ds.name)
            for agent in cfg.agents
            for arm in cfg.arms
            for guidance in (cfg.guidance[agent] if arm.startswith("guided") else [0.0])
            for seed in cfg.seeds
        ]
        save = partial(_save, out, results)
        run_jobs(cfg.suite, executor, jobs, {ds.name: entry}, save)
        if cfg.check_trajectories:
            entry["synthetic_check"] = {
                agent: _compare_synthetic(
                    cfg, ds, data, data_path, model, runs[0]["checkpoint"], cfg.guidance[agent]
                )
                for agent in cfg.agents
                if (runs := _guided_runs(entry, agent))
            }
        if entry["runs"]:
            _plot(ds.name, entry, cfg.agents, out / f"{ds.name}.png")
        write_results(out, results, report(results))
    write_results(out, results, report(results))
    print(f"[bench {cfg.suite}] wrote {out}/report.md")
    return results


def _ensure_dataset(ds: Dataset) -> str:
    data_cfg = load_config(CONFIG_DIR / ds.data_config, OfflineDataConfig)
    if Path(data_cfg.output).exists():
        return data_cfg.output
    source = Path(data_cfg.source)
    if not (source / "checkpoints" / "last").exists():
        if not data_cfg.source_config:
            raise FileNotFoundError(f"{source}: no SAC source run, and no source_config to make it")
        finetune(
            load_config(CONFIG_DIR / data_cfg.source_config, FinetuneConfig, [f"run_dir={source}"])
        )
    make_offline_data(data_cfg)
    return data_cfg.output


def _train_model(ds: Dataset, data_path: str, out: Path, overrides: list[str]) -> Path:
    from robopolicy.synth.train import train_trajectory_model

    synth_cfg = load_config(
        CONFIG_DIR / ds.synth_config,
        SynthConfig,
        [f"dataset={data_path}", f"run_dir={out / ds.name / 'trajectory_model'}", *overrides],
    )
    return Path(train_trajectory_model(synth_cfg)["run_dir"])


def _save(out: Path, results: dict[str, Any]) -> None:
    write_results(out, results, report(results))


def arm_label(arm: str, guidance: float) -> str:
    """The run key's arm: ``guided-lam0.1`` for a guided arm, else the arm's name."""
    return f"{arm}-lam{guidance:g}" if arm.startswith("guided") else arm


def _run_job(cfg, ds, data_path, model, agent, arm, guidance, seed, out: Path) -> Job:
    """One agent, arm, lambda and seed as a job, its config built (and checked) here."""
    label = arm_label(arm, guidance)
    run_dir = out / agent / label / f"seed{seed}"
    overrides = [f"dataset={data_path}", f"run_dir={run_dir}", f"seed={seed}"]
    overrides += [f"agent.algo={agent}", f"name={ds.name}_{agent}_{label}"]
    overrides += [f"steps={cfg.steps}"] if cfg.steps else []
    if arm == "real":
        overrides += ["synthetic.model=null", "synthetic.guidance=0"]
    else:
        overrides += [f"synthetic.model={model}", f"synthetic.guidance={guidance}"]
        overrides += [f"synthetic.relabel_with_simulator={arm.endswith('_oracle')}"]
    off_cfg = load_config(CONFIG_DIR / ds.offline_config, OfflineConfig, overrides + cfg.overrides)
    num_gpus, off_cfg.num_threads = run_resources(  # offline runs are CPU runs
        cfg.executor, cfg.ray, "cpu", off_cfg.num_threads
    )
    return Job(
        f"{ds.name}/{agent}/{label}/seed{seed}",
        _offline_run,
        (OmegaConf.to_yaml(off_cfg), agent, arm, guidance, seed),
        num_cpus=cfg.ray.num_cpus,
        num_gpus=num_gpus,
    )


def _offline_run(
    config_yaml: str, agent: str, arm: str, guidance: float, seed: int
) -> dict[str, Any]:
    """One offline run of the bench (in this process or on a Ray worker), then its row."""
    off_cfg = OmegaConf.merge(OmegaConf.structured(OfflineConfig), OmegaConf.create(config_yaml))
    result = train_offline(off_cfg)
    final = result["final"]
    return {
        "agent": agent,
        "arm": arm,
        "guidance": guidance,
        "label": arm_label(arm, guidance),
        "seed": seed,
        "final_return": final["mean_return"],
        "final_normalized": final["normalized_return"],
        "curve": [[r["step"], r["normalized_return"]] for r in result["history"]],
        "synthetic_log_likelihood": final.get("synthetic_log_likelihood"),
        "real_log_likelihood": final.get("real_log_likelihood"),
        "minutes": result["minutes"],
        "generation_minutes": result["generation_minutes"],
        "checkpoint": result["checkpoint"],
    }


def _guided_runs(entry: dict, agent: str) -> list[dict]:
    """The agent's guided runs, smallest lambda first (seeds in order)."""
    runs = [r for r in entry["runs"].values() if r["agent"] == agent and r["arm"] == "guided"]
    return sorted(runs, key=lambda r: r["guidance"])


def _compare_synthetic(
    cfg: Config, ds: Dataset, data, data_path: str, model_run, agent_checkpoint, grid
) -> dict[str, Any]:
    """Unguided and guided (each lambda of ``grid``) samples for one target policy, same noise
    seeds."""
    model, _ = load_trajectory_model(model_run)
    agent = load_offline_agent(agent_checkpoint)
    off_cfg = load_config(
        CONFIG_DIR / ds.offline_config, OfflineConfig, [f"dataset={data_path}", *cfg.overrides]
    )
    model.to(resolve_device(off_cfg.synthetic.device, "synthetic.device"))
    sampler = off_cfg.synthetic.sampler
    check: dict[str, Any] = {"target_policy": str(agent_checkpoint), "by_guidance": {}}
    for guidance in sorted({0.0, *grid}):
        raw = generate(model, cfg.check_trajectories, sampler, agent, guidance, seed=12345)
        check["by_guidance"][f"{guidance:g}"] = inspect_synthetic(raw, model, data, agent)
    check["real_log_likelihood"] = mean_log_likelihood(agent, data.tensors())
    return check


def _plot(name: str, entry: dict, agents: list[str], path: Path) -> None:
    """Normalised return against agent updates, one panel per agent: each seed faint, the mean
    of the seeds bold; guided arms in reds, darker for larger lambda; oracle arms dashed."""
    fig, axes = plt.subplots(1, len(agents), figsize=(7 * len(agents), 4), squeeze=False)
    for ax, agent in zip(axes[0], agents, strict=True):
        groups = arm_groups(entry, agent)
        guided = sorted({r[0]["guidance"] for r in groups.values() if r[0]["arm"] == "guided"})
        for label, runs in groups.items():
            arm = runs[0]["arm"]
            color, style = ARM_STYLES[arm]
            if arm.startswith("guided") and len(guided) > 1:
                shade = guided.index(runs[0]["guidance"]) / (len(guided) - 1)
                color = plt.cm.Reds(0.45 + 0.5 * shade)
            curves = [np.array(r["curve"], dtype=float) for r in runs]
            for c in curves:
                ax.plot(c[:, 0], c[:, 1], color=color, ls=style, alpha=0.3, lw=1)
            length = min(len(c) for c in curves)
            mean = np.mean([c[:length, 1] for c in curves], axis=0)
            ax.plot(
                curves[0][:length, 0],
                mean,
                color=color,
                ls=style,
                lw=2.5,
                label=f"{label} (mean of {len(runs)})",
            )
        ax.set(xlabel="agent updates", ylabel="normalised return", title=f"{name}: {agent}")
        if groups:
            ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
