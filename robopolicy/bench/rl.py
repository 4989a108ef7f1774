"""``robopolicy bench rl`` (residual, DSRL-SAC, DSRL-NA and EXPO), ``robopolicy bench residual``
and ``robopolicy bench dsrl``: RL methods side by side on the scarce-data tasks (which methods:
``configs/bench/<suite>.yaml``).

For each task: train the scarce-data BC base if no checkpoint is given (collecting its data if
missing), then run each method for each seed with the same env-step budget, evaluating every
``eval_every`` env steps. Reports success against env steps (plot per task: the base as a
dashed line, seeds as thin lines, their mean bold), the final success with its Wilson
interval, the best eval so far (a run's ``checkpoints/best``), the env steps at which the eval
success first reached ``target``, and the wall time.

``previous`` brings in runs of an earlier bench (its results.json) for methods this one does not
run, so curves finished before can sit beside new ones; they are taken only when their task's
base checkpoint holds the same weights as this one's, and the report names where they came from.

``resume`` goes on with an interrupted bench in its own folder: a run that ran its budget is read
back, one with checkpoints goes on from its newest (its config checked to be the one this bench
asks for), one without starts, a base it was training is finished from its newest checkpoint,
and the base evals made before are read back. Runs of the earlier results that this bench does
not select stay in its report. Wall times are whole runs', summed over the processes whose work
led to the final checkpoint (runs whose checkpoints predate the clock have none: "n/a").

``executor=ray`` hands the runs (every task's methods and seeds) to Ray as independent tasks,
``ray.num_cpus`` / ``ray.num_gpus`` each, on this machine or a cluster (``ray.address``); the
bases and their evals stay in this process. Either way a run that fails is reported with its
error in results.json and the report, and the other runs finish.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from robopolicy.bench.jobs import failure_lines, run_jobs, run_resources
from robopolicy.bench.report import machine_info, markdown_table, new_run_dir, write_results
from robopolicy.checkpoint import (
    CheckpointError,
    read_meta,
    resolve_checkpoint,
    saved_config,
    saved_steps,
)
from robopolicy.config import CONFIG_DIR, ConfigError, load_config, to_dict
from robopolicy.device import resolve_device
from robopolicy.distributed import RayConfig, check_executor
from robopolicy.distributed.executor import Executor, Job, make_executor
from robopolicy.files import atomic_save_figure
from robopolicy.rl.config import BASE_METHODS, FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.sim.evaluate import EvalConfig, run_eval_config
from robopolicy.training.bc import train_bc
from robopolicy.training.config import TrainConfig


@dataclass
class Task:
    name: str
    base_train_config: str  # relative to configs/: trains the base when ``base`` is unset
    collect_config: str  # relative to configs/: run when the base's dataset is missing
    methods: dict[str, str] = field(default_factory=dict)  # label -> finetune config
    base: str | None = None  # an existing BC checkpoint (skips training)


@dataclass
class Config:
    suite: str = "residual"  # names the output folder runs/bench/<suite>/
    tasks: list[Task] = field(default_factory=list)
    only: list[str] = field(default_factory=list)  # task names (empty: all)
    # method labels to run (empty: all; [none]: none, to report the base and ``previous`` runs)
    methods: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    env_steps: int = 100_000
    eval_every: int = 5000
    eval_episodes: int = 20
    final_eval_episodes: int = 50
    target: float = 0.9
    overrides: list[str] = field(default_factory=list)  # applied to every finetune run
    # results.json (or run folders) of earlier benches whose runs join this report, for the
    # methods not run here, where the task's base weights are the same
    previous: list[str] = field(default_factory=list)
    # evaluate the base this many times in all (the base eval is draw 0), each with its own
    # sampler seed, and report the share of eval episodes (initial states) solved in at least
    # one draw: what the base can do there under some noise, a guide to what steering it can reach
    base_draws: int = 0
    out_root: str = "runs/bench"
    resume: str = ""  # an interrupted bench's folder (runs/bench/<suite>/<time>) to go on with
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # local: the runs one after the other here; ray: as Ray tasks
    ray: RayConfig = field(default_factory=RayConfig)


# the settings a resumed bench must share with the bench it goes on with
RUN_SETTINGS = ("env_steps", "eval_every", "eval_episodes", "final_eval_episodes")
# a resumed run's config must equal the one this bench would start, but for these: where it
# runs (device, threads), where it is written, and the base (compared by the checkpoint it
# names, not by how the path is spelt)
RESUME_FREE_KEYS = ("device", "num_threads", "run_dir", "resume", "base")


def run(cfg: Config) -> dict[str, Any]:
    known = {label for task in cfg.tasks for label in task.methods}
    unknown = sorted(set(cfg.methods) - known - {"none"})
    if unknown:
        raise ConfigError(f"methods: {unknown} not in this suite's methods {sorted(known)}")
    if cfg.base_draws < 0:
        raise ConfigError(f"base_draws must be >= 0, got {cfg.base_draws}")
    check_executor(cfg.executor, cfg.ray)
    earlier = [_read_results(source) for source in cfg.previous]  # fail before any work
    executor = make_executor(cfg.executor, cfg.ray)  # joins the cluster before any work
    _check_devices(cfg, executor)
    out, before = _resumed_folder(cfg) if cfg.resume else (new_run_dir(cfg.out_root, cfg.suite), {})
    results: dict[str, Any] = {
        "suite": cfg.suite,
        "machine": machine_info(),
        "settings": {
            k: to_dict(cfg)[k]
            for k in (
                "seeds",
                "env_steps",
                "eval_every",
                "eval_episodes",
                "final_eval_episodes",
                "target",
                "overrides",
                "methods",
                "previous",
                "base_draws",
            )
        },
        "tasks": dict(before.get("tasks", {})),  # a resumed bench keeps what it does not rerun
    }
    tasks = [t for t in cfg.tasks if not cfg.only or t.name in cfg.only]
    jobs: list[Job] = []
    for task in tasks:
        # an earlier bench's base, when this task has none: its runs then stay comparable
        base = task.base or _earlier_base(earlier, task.name) or _train_base(task, out)
        run_here = [m for m in task.methods if not cfg.methods or m in cfg.methods]
        kept = results["tasks"].get(task.name, {}).get("runs", {})
        entry: dict[str, Any] = {"base": str(base), "runs": dict(kept)}
        rerun = {f"{label}/seed{seed}" for label in run_here for seed in cfg.seeds}
        failed_before = results["tasks"].get(task.name, {}).get("failed", {})
        if any(key not in rerun for key in failed_before):
            entry["failed"] = {k: v for k, v in failed_before.items() if k not in rerun}
        digest = _weights_digest(base, f"task {task.name!r}") if earlier else None
        for path, bench in earlier:
            for key, run in _previous_runs(path, bench, task.name, digest, run_here).items():
                if key in entry["runs"] and entry["runs"][key].get("from") == run["from"]:
                    continue  # the same run, brought in by two benches
                if key in entry["runs"]:
                    where = entry["runs"][key].get("from", f"this bench ({out})")
                    raise ConfigError(f"previous: {task.name} {key} is in both {where} and {path}")
                entry["runs"][key] = run
        print(f"[bench {cfg.suite}] {task.name} base policy")
        base_eval = _seeded_eval(base, cfg, out / task.name / "base_eval", sampler_seed=0)
        entry.update(
            base_success=base_eval["success_rate"],
            base_ci95=base_eval["success_ci95"],
            base_n=base_eval["n_episodes"],
        )
        if cfg.base_draws:
            entry.update(_base_support(base, cfg, out / task.name / "base_draws", base_eval))
        results["tasks"][task.name] = entry
        for label, config in task.methods.items():
            if label not in run_here:
                continue
            for seed in cfg.seeds:
                run_dir = out / task.name / label / f"seed{seed}"
                jobs.append(_run_job(cfg, task.name, label, config, base, seed, run_dir))
    save = partial(_save, out, results)
    run_jobs(cfg.suite, executor, jobs, results["tasks"], save)
    for task in tasks:
        _plot(task.name, results["tasks"][task.name], cfg, out / f"{task.name}.png")
    write_results(out, results, _report(results))
    print(f"[bench {cfg.suite}] wrote {out}/report.md")
    for line in _summary_rows(results):
        print("  " + " | ".join(str(c) for c in line))
    return results


def _save(out: Path, results: dict[str, Any]) -> None:
    write_results(out, results, _report(results))


def _seeded_eval(base: Path | str, cfg: Config, out: Path, sampler_seed: int) -> dict[str, Any]:
    """The base's final-size eval with its sampler seeded (the envs' seeds are the eval seeds),
    so the base's figure repeats from one bench to the next (the global RNG is left as it was).
    A resumed bench reads back the eval it made before: the same seeds give the same figure."""
    made = out / "eval.json"
    if cfg.resume and made.is_file():
        return json.loads(made.read_text())
    return run_eval_config(
        EvalConfig(
            checkpoint=str(base),
            n_episodes=cfg.final_eval_episodes,
            sampler_seed=sampler_seed,
            video_episodes=0,
            out_dir=str(out),
        )
    )


def _base_support(base: Path | str, cfg: Config, out: Path, first: dict) -> dict[str, Any]:
    """``base_draws`` evals of the base on the same initial states (``first``, the base eval,
    is draw 0; the others use sampler seeds 1, 2, ...): each draw's success, and the share of
    initial states that any draw solves."""
    draws = [first] + [
        _seeded_eval(base, cfg, out / f"draw{k}", sampler_seed=k) for k in range(1, cfg.base_draws)
    ]
    solved = np.any([[e["success"] for e in d["per_episode"]] for d in draws], axis=0)
    return {
        "base_draw_success": [d["success_rate"] for d in draws],
        "base_any_draw": float(solved.mean()),
    }


def _weights_digest(checkpoint: Path | str, context: str) -> str:
    """One digest of a checkpoint's safetensors files (weights and normalizer)."""
    try:
        directory = resolve_checkpoint(checkpoint)
    except CheckpointError as err:
        raise ConfigError(f"{context}: {err}") from err
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _read_results(source: str) -> tuple[Path, dict]:
    """An earlier bench's results.json (given it or its folder)."""
    path = Path(source)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"previous: {path} is not a bench results.json")
    return path, json.loads(path.read_text())


def _earlier_base(earlier: list[tuple[Path, dict]], task: str) -> str | None:
    """The base checkpoint the first earlier bench with ``task`` started from."""
    return next((b["tasks"][task]["base"] for _, b in earlier if task in b.get("tasks", {})), None)


def _previous_runs(path: Path, bench: dict, task: str, base_digest: str, exclude) -> dict:
    """The runs of ``task`` in an earlier bench, except methods in ``exclude``; refused when
    that bench's base weights differ from this bench's (``base_digest``): curves from another
    starting point would mislead."""
    entry = bench.get("tasks", {}).get(task)
    if entry is None:
        print(f"[bench] previous: {path} has no task {task!r}")
        return {}
    context = f"previous: {path}, task {task!r}"
    if _weights_digest(entry["base"], context) != base_digest:
        raise ConfigError(
            f"{context} ran from base {entry['base']}, whose weights differ from this bench's base"
        )
    return {  # "from": the bench that made the run (an earlier import keeps its origin)
        key: {**run, "from": run.get("from", str(path))}
        for key, run in entry["runs"].items()
        if key.split("/")[0] not in exclude
    }


def _resumed_folder(cfg: Config) -> tuple[Path, dict[str, Any]]:
    """The folder of the bench to go on with, and its results so far ({} if it wrote none);
    its settings must be this bench's, or its runs would not be comparable."""
    out = Path(cfg.resume)
    results = out / "results.json"
    if not results.is_file() and not any((out / task.name).is_dir() for task in cfg.tasks):
        raise ConfigError(
            f"resume: {out} is not a bench folder of suite {cfg.suite!r} (no results.json and "
            f"no task folder {sorted(task.name for task in cfg.tasks)})"
        )
    earlier: dict[str, Any] = {}
    if results.is_file():
        earlier = json.loads(results.read_text())
        if earlier.get("suite") != cfg.suite:
            raise ConfigError(
                f"resume: {out} is a {earlier.get('suite')!r} bench, not {cfg.suite!r}"
            )
        for key in RUN_SETTINGS:
            if earlier["settings"][key] != getattr(cfg, key):
                raise ConfigError(
                    f"resume: {out} ran with {key}={earlier['settings'][key]}, this bench asks "
                    f"for {key}={getattr(cfg, key)}"
                )
    return out, earlier


def _train_base(task: Task, out: Path) -> Path:
    """The task's base, trained in the bench's folder. A resumed bench keeps the base it had
    trained to its steps, and finishes one it was still training from its newest checkpoint
    (a fresh run there would refuse the folder that holds it)."""
    run_dir = out / task.name / "base"
    train_cfg = load_config(
        CONFIG_DIR / task.base_train_config, TrainConfig, [f"run_dir={run_dir}"]
    )
    if saved_steps(run_dir):
        newest = resolve_checkpoint(run_dir)
        if read_meta(newest)["step"] >= train_cfg.optim.steps:
            return newest
        train_cfg.resume = str(newest)
    if not Path(train_cfg.task.dataset).exists():
        collect(
            load_config(
                CONFIG_DIR / task.collect_config,
                CollectConfig,
                [f"output={train_cfg.task.dataset}"],
            )
        )
    return resolve_checkpoint(train_bc(train_cfg)["checkpoint"])


def _check_devices(cfg: Config, executor: Executor) -> None:
    """A method config that needs a GPU this machine (or, on Ray, every node of the cluster)
    lacks fails now, not after the base is trained and the other methods have run."""
    for task in cfg.tasks:
        for label, config in task.methods.items():
            if cfg.methods and label not in cfg.methods:
                continue
            device = load_config(CONFIG_DIR / config, FinetuneConfig, list(cfg.overrides)).device
            what = f"{task.name} {label} ({config})"
            if cfg.executor == "ray":  # the runs' GPUs are the cluster's, not this machine's
                num_gpus, _ = run_resources(cfg.executor, cfg.ray, device, 1)
                executor.check(cfg.ray.num_cpus, num_gpus, what)
                continue
            try:
                resolve_device(device)
            except ConfigError as err:
                raise ConfigError(f"{what}: {err}") from err


def _run_job(
    cfg: Config, task: str, label: str, config: str, base: Path | str, seed: int, run_dir: Path
) -> Job:
    """One run as a job, its config built and checked here (a resumed run against the one it
    goes on with), so bad input stops the bench before any run starts."""
    ft_cfg = _run_config(cfg, config, base, seed, run_dir)
    num_gpus, ft_cfg.num_threads = run_resources(
        cfg.executor, cfg.ray, ft_cfg.device, ft_cfg.num_threads
    )
    return Job(
        f"{task}/{label}/seed{seed}",
        _finetune_run,
        (OmegaConf.to_yaml(ft_cfg), config, seed, cfg.target),
        num_cpus=cfg.ray.num_cpus,
        num_gpus=num_gpus,
    )


def _run_config(
    cfg: Config, config: str, base: Path | str, seed: int, run_dir: Path
) -> FinetuneConfig:
    overrides = [
        f"run_dir={run_dir}",
        f"seed={seed}",
        f"env_steps={cfg.env_steps}",
        f"eval_every={cfg.eval_every}",
        f"eval_episodes={cfg.eval_episodes}",
        f"final_eval_episodes={cfg.final_eval_episodes}",
        *cfg.overrides,
    ]
    ft_cfg = load_config(CONFIG_DIR / config, FinetuneConfig, overrides)
    if ft_cfg.method in BASE_METHODS:  # every method starts from this bench's base
        ft_cfg.base = str(base)
    if saved_steps(run_dir):  # an interrupted (or finished) run of the bench resumed here
        ft_cfg.resume = str(_resumable(run_dir, ft_cfg))
    return ft_cfg


def _finetune_run(config_yaml: str, config: str, seed: int, target: float) -> dict:
    """One run of the bench (in this process or on a Ray worker): finetune, then its row."""
    ft_cfg = OmegaConf.merge(OmegaConf.structured(FinetuneConfig), OmegaConf.create(config_yaml))
    result = finetune(ft_cfg)
    history = result["history"]
    # the step-0 eval is the untrained starting point: reaching the target needs learning
    reached = next(
        (r["env_steps"] for r in history if r["env_steps"] > 0 and r["success_rate"] >= target),
        None,
    )
    final = result["final"]
    return {
        "config": config,
        "method": ft_cfg.method,
        "algo": ft_cfg.agent.algo,
        "seed": seed,
        "minutes": result["minutes"],
        "env_steps": result["env_steps"],
        "curve": [[r["env_steps"], r["success_rate"]] for r in history],
        "env_steps_to_target": reached,
        "final_success": final["success_rate"],
        "final_ci95": final["success_ci95"],
        "final_n": final["n_episodes"],
        "checkpoint": result["checkpoint"],
    }


def _resumable(run_dir: Path, wanted: FinetuneConfig) -> Path:
    """The newest checkpoint of an interrupted run, checked to be the run this bench asks for."""
    newest = resolve_checkpoint(run_dir)
    saved = saved_config(newest, "finetune", FinetuneConfig)
    if wanted.base and resolve_checkpoint(saved.base) != resolve_checkpoint(wanted.base):
        raise ConfigError(f"resume: {run_dir} ran from base {saved.base}, not {wanted.base}")
    before, now = _flat(to_dict(saved)), _flat(to_dict(wanted))
    differ = sorted(
        key
        for key in before.keys() | now.keys()
        if key.split(".")[0] not in RESUME_FREE_KEYS and before.get(key) != now.get(key)
    )
    if differ:
        raise ConfigError(
            f"resume: {run_dir} ran with another config than this bench asks for: "
            + ", ".join(f"{k}={before.get(k)} (now {now.get(k)})" for k in differ)
        )
    return newest


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"agent": {"lr": 1}}`` as ``{"agent.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _by_method(entry: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for key, run in entry["runs"].items():
        grouped.setdefault(key.split("/")[0], []).append(run)
    return grouped


def _plot(name: str, entry: dict, cfg: Config, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, (label, runs) in zip(
        plt.rcParams["axes.prop_cycle"].by_key()["color"], _by_method(entry).items(), strict=False
    ):
        curves = [np.array(r["curve"]) for r in runs]
        for c in curves:
            ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.3, lw=1)
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length, 1] for c in curves], axis=0)
        ax.plot(
            curves[0][:length, 0], mean, color=color, lw=2.5, label=f"{label} (mean of {len(runs)})"
        )
    ax.axhline(cfg.target, color="grey", ls=":", lw=1)
    ax.axhline(entry["base_success"], color="black", ls="--", lw=1.5, label="BC base")
    if "base_any_draw" in entry:
        draws = len(entry["base_draw_success"])
        ax.axhline(
            entry["base_any_draw"],
            color="black",
            ls="-.",
            lw=1,
            label=f"base, any of {draws} draws",
        )
    ax.set(
        xlabel="env steps",
        ylabel=f"eval success ({cfg.eval_episodes} episodes)",
        ylim=(0, 1.02),
        title=f"{name}: from the scarce-data BC base",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def _summary_rows(results: dict) -> list[list[Any]]:
    rows = []
    for task, entry in results["tasks"].items():
        low, high = entry["base_ci95"]
        rows.append(
            [
                task,
                "BC base (no RL)",
                "-",
                "-",
                f"{entry['base_success']:.0%} [{low:.0%}, {high:.0%}]",
                "-",
                "-",
                "-",
            ]
        )
        if "base_any_draw" in entry:
            draws = entry["base_draw_success"]
            rows.append(
                [
                    task,
                    f"BC base, solved in any of {len(draws)} draws",
                    "-",
                    "-",
                    f"{entry['base_any_draw']:.0%} (draws: "
                    + ", ".join(f"{r:.0%}" for r in draws)
                    + ")",
                    "-",
                    "-",
                    "-",
                ]
            )
        for label, runs in _by_method(entry).items():
            start = np.mean([r["curve"][0][1] for r in runs])
            finals = ", ".join(
                f"{r['final_success']:.0%} [{r['final_ci95'][0]:.0%}, {r['final_ci95'][1]:.0%}]"
                for r in runs
            )
            reached = [r["env_steps_to_target"] for r in runs]
            rows.append(
                [
                    task,
                    label,
                    len(runs),
                    f"{start:.0%}",
                    finals,
                    ", ".join(_best_of_curve(r["curve"]) for r in runs),
                    ", ".join("never" if s is None else str(s) for s in reached),
                    ", ".join(
                        "n/a" if r["minutes"] is None else f"{r['minutes']:.1f}" for r in runs
                    ),
                ]
            )
    return rows


def _best_of_curve(curve: list[list[float]]) -> str:
    """The best eval of a run's curve and where it first came (what ``checkpoints/best``
    holds), e.g. ``94% (65000)``."""
    steps, success = max(curve, key=lambda point: (point[1], -point[0]))
    return f"{success:.0%} ({int(steps)})"


def _report(results: dict) -> str:
    m = results["machine"]
    s = results["settings"]
    headers = [
        "task",
        "method",
        "seeds",
        "success at step 0",
        "final success [Wilson 95%] per seed",
        "best eval per seed (at env steps)",
        f"env steps to {s['target']:.0%} per seed",
        "wall min per seed",
    ]
    return "\n".join(
        [
            f"# robopolicy bench {results['suite']}",
            "",
            f"{m['date']}, {m['cpu']} ({m['cores']} cores), CUDA: {m['cuda']}, "
            f"commit {m['git_commit']}.",
            f"Budget {s['env_steps']} env steps per run made here; eval every "
            f"{s['eval_every']} env steps on "
            f"{s['eval_episodes']} episodes, final eval on {s['final_eval_episodes']} "
            "(seeds from 100000).",
            "",
            markdown_table(headers, _summary_rows(results)),
            "",
            *[f"![{t}]({t}.png)" for t in results["tasks"]],
            "",
            *_sources(results),
            *_unclocked(results),
            *failure_lines(results["tasks"]),
        ]
    )


def _unclocked(results: dict) -> list[str]:
    """A note for wall times shown as n/a."""
    if all(r["minutes"] is not None for e in results["tasks"].values() for r in e["runs"].values()):
        return []
    return [
        "Wall time n/a: the run's checkpoints were saved before runs kept their clock (it ran, "
        "or was resumed, on older code), so its total time is unknown.",
        "",
    ]


def _sources(results: dict) -> list[str]:
    """Lines naming the earlier benches whose runs this report includes."""
    lines = []
    for task, entry in results["tasks"].items():
        earlier: dict[str, set[str]] = {}
        budget: dict[str, int] = {}
        for key, run in entry["runs"].items():
            if "from" in run:
                earlier.setdefault(run["from"], set()).add(key.split("/")[0])
                budget[run["from"]] = max(budget.get(run["from"], 0), run["env_steps"])
        lines += [
            f"- {task}, {', '.join(sorted(labels))}: runs of an earlier bench, {source} "
            f"({budget[source]} env steps per run, the same base weights)."
            for source, labels in earlier.items()
        ]
    return [*lines, ""] if lines else []
