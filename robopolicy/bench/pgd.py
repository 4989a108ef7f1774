"""``robopolicy bench pgd``: does policy-guided synthetic data help offline RL?

For each offline dataset (made if missing, from its SAC source run, trained if missing) the
trajectory model is trained once, then the same offline agent and budget run three arms per
seed: real data only; + unguided synthetic data; + policy-guided synthetic data. Reported:
final normalised return (references from the dataset: a random policy and the source run's
final policy), and, for the guided arm's final agent as the target policy, synthetic data
sampled unguided and guided side by side: the target's log-likelihood of the synthetic actions
and the dynamics error (MuJoCo replay of each transition).

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

from robopolicy.bench.jobs import failure_lines, run_jobs, run_resources  # noqa: E402
from robopolicy.bench.report import machine_info, markdown_table, new_run_dir, write_results
from robopolicy.config import CONFIG_DIR, load_config, to_dict
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

ARM_STYLES = {  # every arm, with its colour and line style in the plot
    "real": ("tab:grey", "-"),
    "unguided": ("tab:blue", "-"),
    "guided": ("tab:red", "-"),
    "unguided_oracle": ("tab:blue", "--"),
    "guided_oracle": ("tab:red", "--"),
}
ARMS = tuple(ARM_STYLES)
DEFAULT_ARMS = ARMS[:3]


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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    guidance: float = 3.0  # lambda of the guided arm
    steps: int | None = None  # agent steps (None: the offline config's)
    check_trajectories: int = 256  # unguided vs guided comparison at the end
    check_guidance: list[float] = field(default_factory=lambda: [0.3, 1.0, 10.0])  # extra lambdas
    overrides: list[str] = field(default_factory=list)  # applied to every offline run
    synth_overrides: list[str] = field(default_factory=list)  # applied to model training
    out_root: str = "runs/bench"
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # local: the runs one after the other here; ray: as Ray tasks
    ray: RayConfig = field(default_factory=RayConfig)


def run(cfg: Config) -> dict[str, Any]:
    unknown = sorted(set(cfg.arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    executor = make_executor(cfg.executor, cfg.ray)  # checked, and joined, before any work
    out = new_run_dir(cfg.out_root, cfg.suite)
    results: dict[str, Any] = {
        "suite": cfg.suite,
        "machine": machine_info(),
        "settings": {
            k: to_dict(cfg)[k] for k in ("arms", "seeds", "guidance", "steps", "overrides")
        },
        "datasets": {},
    }
    for ds in [d for d in cfg.datasets if not cfg.only or d.name in cfg.only]:
        data_path = _ensure_dataset(ds)
        model = ds.model or _train_model(ds, data_path, out, cfg.synth_overrides)
        data = load_offline_data(data_path)
        entry: dict[str, Any] = {
            "dataset": data_path,
            "model": str(model),
            "references": data.references,
            "transitions": len(data.actions),
            "dataset_return": float(np.mean(data.episode_returns())),
            "runs": {},
        }
        results["datasets"][ds.name] = entry
        jobs = [
            _run_job(cfg, ds, data_path, model, arm, seed, out / ds.name / arm / f"seed{seed}")
            for arm in cfg.arms
            for seed in cfg.seeds
        ]
        save = partial(_save, out, results)
        run_jobs(cfg.suite, executor, jobs, {ds.name: entry}, save)
        guided = [r for k, r in entry["runs"].items() if k.startswith("guided/")]
        if guided and cfg.check_trajectories:
            entry["synthetic_check"] = _compare_synthetic(
                cfg, ds, data, data_path, model, guided[0]["checkpoint"]
            )
        _plot(ds.name, entry, out / f"{ds.name}.png")
        write_results(out, results, _report(results))
    write_results(out, results, _report(results))
    print(f"[bench pgd] wrote {out}/report.md")
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
    write_results(out, results, _report(results))


def _run_job(cfg, ds, data_path, model, arm, seed, run_dir) -> Job:
    """One arm and seed as a job, its config built (and checked) here."""
    overrides = [f"dataset={data_path}", f"run_dir={run_dir}", f"seed={seed}"]
    overrides += [f"steps={cfg.steps}"] if cfg.steps else []
    if arm == "real":
        overrides += ["synthetic.model=null", "synthetic.guidance=0"]
    else:
        guidance = cfg.guidance if arm.startswith("guided") else 0.0
        overrides += [f"synthetic.model={model}", f"synthetic.guidance={guidance}"]
        overrides += [f"synthetic.relabel_with_simulator={arm.endswith('_oracle')}"]
    off_cfg = load_config(CONFIG_DIR / ds.offline_config, OfflineConfig, overrides + cfg.overrides)
    num_gpus, off_cfg.num_threads = run_resources(  # offline runs are CPU runs
        cfg.executor, cfg.ray, "cpu", off_cfg.num_threads
    )
    return Job(
        f"{ds.name}/{arm}/seed{seed}",
        _offline_run,
        (OmegaConf.to_yaml(off_cfg), arm, seed),
        num_cpus=cfg.ray.num_cpus,
        num_gpus=num_gpus,
    )


def _offline_run(config_yaml: str, arm: str, seed: int) -> dict[str, Any]:
    """One offline run of the bench (in this process or on a Ray worker), then its row."""
    off_cfg = OmegaConf.merge(OmegaConf.structured(OfflineConfig), OmegaConf.create(config_yaml))
    result = train_offline(off_cfg)
    final = result["final"]
    return {
        "arm": arm,
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


def _compare_synthetic(
    cfg: Config, ds: Dataset, data, data_path: str, model_run, agent_checkpoint
) -> dict[str, Any]:
    """Unguided and guided samples for one target policy, same noise seeds."""
    model, _ = load_trajectory_model(model_run)
    agent = load_offline_agent(agent_checkpoint)
    off_cfg = load_config(CONFIG_DIR / ds.offline_config, OfflineConfig, [f"dataset={data_path}"])
    sampler = off_cfg.synthetic.sampler
    check: dict[str, Any] = {"target_policy": str(agent_checkpoint), "guidance": cfg.guidance}
    lambdas = sorted({0.0, cfg.guidance, *cfg.check_guidance})
    check["by_guidance"] = {}
    for guidance in lambdas:
        raw = generate(model, cfg.check_trajectories, sampler, agent, guidance, seed=12345)
        check["by_guidance"][f"{guidance:g}"] = inspect_synthetic(raw, model, data, agent)
    check["unguided"] = check["by_guidance"]["0"]
    check["guided"] = check["by_guidance"][f"{cfg.guidance:g}"]
    real = data.tensors()
    check["real_log_likelihood"] = mean_log_likelihood(agent, real)
    return check


def _plot(name: str, entry: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in ARMS:
        runs = [r for k, r in entry["runs"].items() if k.startswith(f"{arm}/")]
        if not runs:
            continue
        curves = [np.array(r["curve"], dtype=float) for r in runs]
        color, style = ARM_STYLES[arm]
        for c in curves:
            ax.plot(c[:, 0], c[:, 1], color=color, ls=style, alpha=0.3, lw=1)
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length, 1] for c in curves], axis=0)
        label = f"{arm} ({len(runs)})"
        ax.plot(curves[0][:length, 0], mean, color=color, ls=style, lw=2.5, label=label)
    ax.set(xlabel="agent updates", ylabel="normalised return", title=name)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _report(results: dict) -> str:
    lines = [
        "# bench pgd: offline RL with real, unguided and policy-guided synthetic data",
        "",
        f"Machine: {results['machine'].get('cpu')}; settings: {results['settings']}",
        "",
    ]
    for name, entry in results["datasets"].items():
        refs = entry["references"] or {}
        lines += [
            f"## {name}",
            "",
            f"{entry['transitions']} transitions, mean episode return "
            f"{entry['dataset_return']:.1f}; references: random "
            f"{refs.get('random', float('nan')):.1f}, expert "
            f"{refs.get('expert', float('nan')):.1f} ({refs.get('expert_source')}).",
            "",
        ]
        rows = []
        for arm in ARMS:
            runs = [r for k, r in entry["runs"].items() if k.startswith(f"{arm}/")]
            if not runs:
                continue
            scores = [r["final_normalized"] for r in runs]
            rows.append(
                [
                    arm,
                    ", ".join(f"{s:.1f}" for s in scores),
                    f"{np.mean(scores):.1f} ± {np.std(scores):.1f}",
                    f"{np.mean([r['minutes'] for r in runs]):.1f}",
                ]
            )
        lines += [
            markdown_table(["arm", "normalised return per seed", "mean ± std", "min/run"], rows),
            "",
        ]
        check = entry.get("synthetic_check")
        if check:
            rows = [
                [
                    ("unguided" if lam == "0" else f"guided λ = {lam}")
                    + (" (the guided arm's)" if lam == f"{check['guidance']:g}" else ""),
                    f"{one['target_log_likelihood']:.2f}",
                    *(
                        [
                            f"{one['dynamics']['next_state_mse']:.4f}",
                            f"{one['dynamics']['next_state_nmse']:.4f}",
                            f"{one['dynamics']['reward_mse']:.4f}",
                        ]
                        if one["dynamics"]
                        else ["n/a"] * 3
                    ),
                    f"{one['terminal_rate']:.3f}",
                ]
                for lam, one in check["by_guidance"].items()
            ]
            lines += [
                f"Synthetic data sampled for one target policy, the guided arm's final agent "
                f"(same noise seeds in every row); its log-likelihood of the real data: "
                f"{check['real_log_likelihood']:.2f} per step.",
                "",
                markdown_table(
                    [
                        "sampling",
                        "target log-lik / step",
                        "next-state MSE",
                        "normalised MSE",
                        "reward MSE",
                        "terminal rate",
                    ],
                    rows,
                ),
                "",
            ]
        lines += [f"![{name}]({name}.png)", ""]
    return "\n".join(lines + failure_lines(results["datasets"]))
