"""A bench's independent runs through an executor (local or Ray), gathered as a local bench
would list them: each finished run lands in its entry's ``runs``, in the order the jobs were
made, whatever order they end in; a failed one lands in ``failed`` with its error."""

from __future__ import annotations

from collections.abc import Callable

from robopolicy.config import ConfigError
from robopolicy.distributed import RayConfig, check_executor
from robopolicy.distributed.executor import Executor, Job


def run_jobs(
    suite: str, executor: Executor, jobs: list[Job], entries: dict[str, dict], save: Callable
) -> None:
    """Run ``jobs`` (keys ``<entry>/<run key>``) into ``entries``; ``save()`` after each one,
    so an interrupted bench keeps what finished."""
    order = {name: list(entry["runs"]) for name, entry in entries.items()}
    for job in jobs:
        name, key = job.key.split("/", 1)
        order[name] += [key] if key not in order[name] else []
        print(f"[bench {suite}] {name} {key.replace('/seed', ' seed ')}")
    for outcome in executor.run(jobs):
        name, key = outcome.key.split("/", 1)
        entry = entries[name]
        if outcome.ok:
            runs = {**entry["runs"], key: outcome.value}
            entry["runs"] = {k: runs[k] for k in order[name] if k in runs}
        else:
            print(f"[bench {suite}] {name} {key} failed: {outcome.error}")
            entry["runs"].pop(key, None)
            entry.setdefault("failed", {})[key] = {"error": outcome.error}
        save()


def run_resources(executor: str, ray: RayConfig, device: str, threads: int) -> tuple[float, int]:
    """A run's GPUs (``ray.num_gpus``, else 1 for a run on CUDA under Ray) and its torch
    threads (on Ray, a run's unset thread count is its CPUs: runs side by side must not
    oversubscribe the cores)."""
    num_gpus = ray.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if executor == "ray" and device.startswith("cuda") else 0.0
    if executor == "ray" and not threads:
        threads = max(1, int(ray.num_cpus))
    return num_gpus, threads


def failure_lines(entries: dict[str, dict]) -> list[str]:
    """The report's lines for failed runs, with their errors (the others ran to the end)."""
    lines = [
        f"- {name} {key}: {failure['error']}"
        for name, entry in entries.items()
        for key, failure in entry.get("failed", {}).items()
    ]
    if not lines:
        return []
    return ["Failed runs (resume= or a new bench runs them again):", "", *lines, ""]


def local_only(executor: str, suite: str) -> None:
    """The suites that time things (throughput, latency, training speed) run here: runs side
    by side, or on other machines, would change the figures they exist to measure."""
    check_executor(executor, RayConfig())
    if executor != "local":
        raise ConfigError(
            f"bench {suite} measures speed on this machine, so its runs must not share it or run "
            "elsewhere: executor=ray is for the suites of many independent runs (bc, residual, "
            "dsrl, dsrl_gpu, pgd)"
        )
