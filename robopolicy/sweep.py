"""``robopolicy sweep CONFIG "grid.<key>=[...]" ... [metric=...]``: a hyperparameter search over
the keys of a ``train`` or ``finetune`` config, its trials on Ray Tune.

Search keys: ``grid.<key>=[a,b]`` (every value), ``choice.<key>=[a,b]`` (one at random per
sample), ``uniform.<key>=[lo,hi]``, ``loguniform.<key>=[lo,hi]``; ``num_samples`` random draws
per grid point (drawn with ``sample_seed``, so a sweep can be repeated). Every other
``key=value`` sets the config for all trials. The trials are expanded and each one's config
is checked here, so a key the config lacks or a value of the wrong type fails before any
trial starts. Trial k is an ordinary run folder, ``runs/sweep/<name>/<time>/trial_<k>``, that
``eval`` and ``resume=`` accept. ``early_stop=true`` stops trials whose eval metric falls
behind (ASHA, after ``grace_evals`` evals). At the end: ``sweep.csv``, ``sweep.md`` and
``sweep.json`` in the sweep folder, and the best trial's checkpoint.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from robopolicy.bench.report import markdown_table, new_run_dir
from robopolicy.checkpoint import resolve_checkpoint, saved_steps
from robopolicy.config import ConfigError, load_config
from robopolicy.distributed import RayConfig, check_executor
from robopolicy.files import atomic_write_json, atomic_write_text
from robopolicy.rl.config import FinetuneConfig
from robopolicy.training.config import TrainConfig

SEARCH_KINDS = ("grid", "choice", "uniform", "loguniform")
METRICS = ("success_rate", "mean_return")


@dataclass
class SweepConfig:
    command: str = ""  # train | finetune (default: the one whose schema CONFIG fits)
    metric: str = "success_rate"  # an eval metric: success_rate | mean_return
    mode: str = "max"  # max | min
    num_samples: int = 1  # random draws per grid point (of the choice/uniform/loguniform keys)
    sample_seed: int = 0
    early_stop: bool = False  # ASHA on the eval metric: needs evals during training
    grace_evals: int = 2  # evals every trial makes before it may be stopped
    out_root: str = "runs/sweep"
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True)
class Command:
    schema: type
    budget: str  # the key of the run's length, in the steps its evals are reported at
    device: str
    threads: str
    eval_every: str


COMMANDS = {
    "train": Command(
        TrainConfig, "optim.steps", "optim.device", "optim.num_threads", "loop.eval_every"
    ),
    "finetune": Command(FinetuneConfig, "env_steps", "device", "num_threads", "eval_every"),
}


@dataclass
class Plan:
    settings: Any  # SweepConfig
    command: str
    out: Path
    params: list[dict[str, Any]]  # trial k's search values
    specs: list[dict[str, Any]]  # trial k's command, config and overrides
    budgets: list[int]
    max_reports: int  # the most evals a trial reports (ASHA's last rung)
    num_gpus: float


def plan_sweep(config: str, args: list[str]) -> Plan:
    """The sweep's settings and every trial, each trial's config checked; the sweep folder."""
    sweep_args, search, overrides = _split(args)
    settings = load_config(None, SweepConfig, sweep_args)
    check_executor("ray", settings.ray)
    _check_settings(settings)
    command = _command(config, settings.command, overrides)
    spec = COMMANDS[command]
    base = load_config(config, spec.schema, overrides)
    for (kind, key), values in search.items():
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            raise ConfigError(
                f"sweep: {kind}.{key}: {config} ({command} config) has no key {key!r}"
            )
        _check_values(kind, key, values)
    if not search:
        raise ConfigError(
            'sweep: nothing to search; give keys as "grid.<key>=[a,b]" (or choice., uniform., '
            "loguniform.)"
        )
    params = _expand(search, settings.num_samples, settings.sample_seed)
    if not OmegaConf.select(base, spec.threads):  # trials side by side: no oversubscribing
        overrides = [*overrides, f"{spec.threads}={max(1, int(settings.ray.num_cpus))}"]
    trial_overrides, budgets, evals = [], [], []
    for k, values in enumerate(params):
        trial_overrides.append(
            [*overrides, *(f"{key}={json.dumps(value)}" for key, value in values.items())]
        )
        try:
            cfg = load_config(config, spec.schema, trial_overrides[-1])
        except ConfigError as err:
            raise ConfigError(f"sweep: trial {k} {values}: {err}") from err
        _check_trial(cfg, command, settings, k)
        budgets.append(int(OmegaConf.select(cfg, spec.budget)))
        every = OmegaConf.select(cfg, spec.eval_every)
        evals.append(budgets[-1] // every + 2 if every else 1)
    out = new_run_dir(settings.out_root, base.name)  # only once every trial is known good
    specs = [
        {
            "command": command,
            "config": str(config),
            "overrides": [*trial, f"run_dir={(out / f'trial_{k}').resolve()}"],
        }
        for k, trial in enumerate(trial_overrides)
    ]
    device = str(OmegaConf.select(base, spec.device))
    num_gpus = settings.ray.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if device.startswith("cuda") else 0.0
    return Plan(settings, command, out, params, specs, budgets, max(evals), num_gpus)


def run_sweep(plan: Plan) -> dict[str, Any]:
    """The trials on Ray Tune; the table and the best trial."""
    from robopolicy.distributed.tune import Search, run_trials

    s = plan.settings
    search = Search(s.metric, s.mode, s.early_stop, s.grace_evals, plan.max_reports)
    print(f"[sweep] {len(plan.specs)} trials of {plan.command} -> {plan.out}")
    outcomes = run_trials(run_trial, plan.specs, search, s.ray, plan.num_gpus, plan.out)
    rows = [_row(plan, o) for o in outcomes]
    best = _best(rows, s.metric, s.mode)
    summary = {
        "command": plan.command,
        "config": plan.specs[0]["config"],
        "metric": s.metric,
        "mode": s.mode,
        "early_stop": s.early_stop,
        "trials": rows,
        "best": best,
    }
    atomic_write_json(plan.out / "sweep.json", summary)
    atomic_write_text(plan.out / "sweep.csv", _csv(rows))
    atomic_write_text(plan.out / "sweep.md", _markdown(summary))
    return {**summary, "out": str(plan.out)}


def run_trial(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """One trial (on a Ray worker): the ordinary train or finetune run, its evals reported."""
    from robopolicy.runlog import eval_metrics

    cfg = load_config(spec["config"], COMMANDS[spec["command"]].schema, spec["overrides"])

    def on_eval(step: int, summary: dict[str, Any]) -> None:
        report({"step": step, **eval_metrics(summary)})

    if spec["command"] == "train":
        from robopolicy.training.bc import train_bc

        train_bc(cfg, on_eval=on_eval)
    else:
        from robopolicy.rl.finetune import finetune

        finetune(cfg, on_eval=on_eval)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    best = summary["best"]
    lines = [_markdown_table(summary), ""]
    if best is None:
        lines.append(f"no trial reported {summary['metric']}; see {summary['out']}/sweep.md")
    else:
        lines.append(
            f"best: trial {best['trial']} ({summary['metric']} {best['metric']:.3g}) "
            f"-> {best['checkpoint']}"
        )
    lines.append(f"table: {summary['out']}/sweep.csv, {summary['out']}/sweep.md")
    return lines


_MISSING = object()


def _split(args: list[str]) -> tuple[list[str], dict[tuple[str, str], Any], list[str]]:
    """The command line in three: sweep settings, search keys (with their parsed values) and
    the config's own overrides."""
    own = {f for f in SweepConfig.__dataclass_fields__}
    sweep_args, search, overrides = [], {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"sweep: bad argument {arg!r}: expected key=value")
        kind, _, rest = key.partition(".")
        if kind in SEARCH_KINDS and rest:
            search[(kind, rest)] = OmegaConf.to_container(
                OmegaConf.from_dotlist([f"value={value}"])
            )["value"]
        elif key.split(".")[0] in own:
            sweep_args.append(arg)
        else:
            overrides.append(arg)
    return sweep_args, search, overrides


def _check_settings(s: Any) -> None:
    if s.metric not in METRICS:
        raise ConfigError(f"sweep: metric must be one of {list(METRICS)}, got {s.metric!r}")
    if s.mode not in ("max", "min"):
        raise ConfigError(f"sweep: mode must be max or min, got {s.mode!r}")
    if s.num_samples < 1 or s.grace_evals < 1:
        raise ConfigError(
            f"sweep: num_samples and grace_evals must be >= 1, got {s.num_samples}, {s.grace_evals}"
        )
    if s.command not in ("", *COMMANDS):
        raise ConfigError(f"sweep: command must be train or finetune, got {s.command!r}")


def _command(config: str, command: str, overrides: list[str]) -> str:
    """The command whose schema the config fits (or the one named)."""
    if command:
        return command
    errors = {}
    for name, spec in COMMANDS.items():
        try:
            load_config(config, spec.schema, overrides)
            return name
        except ConfigError as err:
            errors[name] = str(err)
    raise ConfigError(
        f"sweep: {config} is neither a train nor a finetune config (as train: {errors['train']}; "
        f"as finetune: {errors['finetune']})"
    )


def _check_values(kind: str, key: str, values: Any) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sweep: {kind}.{key} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform"):
        ok = len(values) == 2 and all(isinstance(v, (int, float)) for v in values)
        if not ok or values[0] >= values[1] or (kind == "loguniform" and values[0] <= 0):
            raise ConfigError(
                f"sweep: {kind}.{key} needs [low, high] with low < high"
                + (" and low > 0" if kind == "loguniform" else "")
                + f", got {values!r}"
            )


def _expand(search: dict[tuple[str, str], Any], num_samples: int, seed: int) -> list[dict]:
    """Every grid point, ``num_samples`` times, each time with a fresh draw of the random keys."""
    rng = np.random.default_rng(seed)
    grid = {key: values for (kind, key), values in search.items() if kind == "grid"}
    trials = []
    for point in itertools.product(*grid.values()):
        for _ in range(num_samples):
            values = dict(zip(grid, point, strict=True))
            for (kind, key), options in search.items():
                if kind == "choice":
                    values[key] = options[int(rng.integers(len(options)))]
                elif kind == "uniform":
                    values[key] = float(rng.uniform(*options))
                elif kind == "loguniform":
                    values[key] = float(np.exp(rng.uniform(*np.log(options))))
            trials.append(values)
    return trials


def _check_trial(cfg: Any, command: str, settings: Any, k: int) -> None:
    spec = COMMANDS[command]
    if settings.early_stop and not OmegaConf.select(cfg, spec.eval_every):
        raise ConfigError(
            f"sweep: early_stop needs evals during training; trial {k} has {spec.eval_every}=0"
        )
    if command == "train" and cfg.loop.final_eval_episodes < 1:
        raise ConfigError(
            f"sweep: trial {k} makes no final eval (loop.final_eval_episodes=0): nothing to compare"
        )


def _row(plan: Plan, outcome: Any) -> dict[str, Any]:
    k = outcome.trial
    run_dir = plan.out / f"trial_{k}"
    step = outcome.metrics.get("step")
    if outcome.error is not None:
        status = "failed"
    elif step is None:
        status = "no eval"
    else:
        status = "done" if step >= plan.budgets[k] else "stopped early"
    return {
        "trial": k,
        **plan.params[k],
        "status": status,
        "step": step,
        "metric": outcome.metrics.get(plan.settings.metric),
        "run_dir": str(run_dir),
        "checkpoint": str(resolve_checkpoint(run_dir)) if saved_steps(run_dir) else None,
        "error": outcome.error,
    }


def _best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best trial that ran its budget (else the best of those with a figure)."""
    scored = [r for r in rows if r["metric"] is not None and r["checkpoint"] is not None]
    done = [r for r in scored if r["status"] == "done"] or scored
    if not done:
        return None
    pick = max if mode == "max" else min
    return pick(done, key=lambda r: r["metric"])


def _csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _markdown_table(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    headers = [h for h in rows[0] if h not in ("run_dir", "error")]
    cells = [[f"{r[h]:.4g}" if isinstance(r[h], float) else r[h] for h in headers] for r in rows]
    return markdown_table(headers, cells)


def _markdown(summary: dict[str, Any]) -> str:
    best = summary["best"]
    failed = [f"- trial {r['trial']}: {r['error']}" for r in summary["trials"] if r["error"]]
    return "\n".join(
        [
            f"# robopolicy sweep: {summary['command']} {summary['config']}",
            "",
            f"Metric: eval {summary['metric']} ({summary['mode']}), the last eval each trial "
            f"made; early stopping: {'ASHA' if summary['early_stop'] else 'off'}.",
            "",
            _markdown_table(summary),
            "",
            "Best: none" if best is None else f"Best: trial {best['trial']}, {best['checkpoint']}",
            "",
            *(["Failed trials:", "", *failed, ""] if failed else []),
        ]
    )
