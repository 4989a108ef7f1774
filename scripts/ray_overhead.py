"""What Ray adds to each bench run on this machine: starting a local Ray, a run's first task on
a fresh worker (process start plus importing robopolicy's RL stack), a task on a warm worker,
and moving a run's result and a larger array back to the driver. Through robopolicy's own
executor, so the figures are the bench's.

    python scripts/ray_overhead.py [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from robopolicy.distributed import RayConfig
from robopolicy.distributed.cluster import connect, shutdown
from robopolicy.distributed.executor import Job, RayExecutor


def _nothing() -> None:
    return None


def _import_rl_stack() -> float:
    """What a bench run imports before its first env step (torch, MuJoCo, the RL code)."""
    start = time.perf_counter()
    import robopolicy.bench.rl  # noqa: F401

    return time.perf_counter() - start


def _payload(nbytes: int) -> np.ndarray:
    return np.zeros(nbytes, dtype=np.uint8)


def _run_row() -> dict:
    """A result row of the size a bench run returns (a 21-point curve, its figures)."""
    return {"curve": [[5000 * i, 0.5] for i in range(21)], "final_ci95": [0.1, 0.9], "x": "y" * 200}


def _timed(executor: RayExecutor, jobs: list[Job]) -> float:
    start = time.perf_counter()
    outcomes = list(executor.run(jobs))
    assert all(o.ok for o in outcomes), outcomes
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    connect(RayConfig(local_cpus=args.cpus))
    figures = {"ray_start_s": time.perf_counter() - start}
    executor = RayExecutor(RayConfig())
    figures["first_task_s"] = _timed(executor, [Job("first", _nothing)])
    first = list(executor.run([Job("import", _import_rl_stack)]))[0]
    figures["import_rl_stack_on_worker_s"] = first.value
    figures["warm_task_ms"] = 1e3 * np.median(
        [_timed(executor, [Job("warm", _nothing)]) for _ in range(20)]
    )
    figures["run_row_ms"] = 1e3 * np.median(
        [_timed(executor, [Job("row", _run_row)]) for _ in range(20)]
    )
    for mb in (10, 100):
        figures[f"array_{mb}MB_ms"] = 1e3 * _timed(
            executor, [Job("array", _payload, (mb * 2**20,))]
        )
    shutdown()
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}, indent=1))


if __name__ == "__main__":
    main()
