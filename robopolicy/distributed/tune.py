"""Trials on Ray Tune: a fixed list of trials (the caller expands and checks the search space
first), each a call of a module-level function that reports metrics as it goes; optional
early stopping with ASHA on the reported metric.

The trials are indexed (Tune's grid over ``trial`` = 0..n-1), so trial k is the caller's k:
its folder, its settings and its row in the results table keep that number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robopolicy.distributed.cluster import check_resources, connect
from robopolicy.distributed.config import RayConfig

# run_trial(spec, report): one trial; report(metrics) once per eval
TrialFn = Callable[[Any, Callable[[dict[str, Any]], None]], None]


@dataclass
class TrialOutcome:
    trial: int
    metrics: dict[str, Any]  # the last metrics the trial reported ({} if none)
    error: str | None


@dataclass
class Search:
    metric: str
    mode: str  # max | min
    early_stop: bool = False
    grace: int = 2  # reports every trial makes before ASHA may stop it
    max_reports: int = 100  # the most reports a trial makes (ASHA's last rung)


def run_trials(
    fn: TrialFn,
    specs: Sequence[Any],
    search: Search,
    ray: RayConfig,
    num_gpus: float,
    storage: Path,
) -> list[TrialOutcome]:
    """Every spec as a Tune trial of ``fn`` with ``ray.num_cpus`` CPUs and ``num_gpus`` GPUs;
    Tune's own records go to ``storage``. The outcomes in trial order."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    connect(ray)
    check_resources(ray.num_cpus, num_gpus, "each trial")
    trainable = tune.with_parameters(_trainable, fn=fn, specs=list(specs), cwd=os.getcwd())
    scheduler = (
        ASHAScheduler(
            grace_period=search.grace,
            max_t=max(search.max_reports, search.grace + 1),
            reduction_factor=2,  # sweeps here are small: halve at each rung
        )
        if search.early_stop
        else None
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": ray.num_cpus, "gpu": num_gpus}),
        param_space={"trial": tune.grid_search(list(range(len(specs))))},
        tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, scheduler=scheduler),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(Path(storage).resolve()), verbose=1
        ),
    )
    grid = tuner.fit()
    outcomes = {}
    for result in grid:
        k = result.config["trial"]
        error = None if result.error is None else _describe(result.error)
        outcomes[k] = TrialOutcome(k, _reported(result.metrics or {}), error)
    return [outcomes[k] for k in sorted(outcomes)]


def _trainable(params: dict[str, Any], fn: TrialFn, specs: list, cwd: str) -> None:
    """One trial on its worker, in the driver's working directory (relative paths in configs
    mean the same as in a local run)."""
    from ray import tune

    if os.path.isdir(cwd):
        os.chdir(cwd)
    fn(specs[params["trial"]], tune.report)


def _reported(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the trial itself reported, without Tune's bookkeeping."""
    bookkeeping = {
        "config",
        "trial_id",
        "experiment_tag",
        "date",
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "time_since_restore",
        "iterations_since_restore",
        "checkpoint_dir_name",
        "done",
        "training_iteration",
    }
    return {k: v for k, v in metrics.items() if k not in bookkeeping}


def _describe(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
