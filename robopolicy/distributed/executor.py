"""Independent jobs (bench runs, eval shards) mapped to their results, in this process or on
Ray workers, with the same results either way.

A job that raises is a failed outcome that names its error, not the end of the others: one
diverged seed must not cost the hours the other runs took.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from robopolicy.distributed.cluster import check_resources, connect
from robopolicy.distributed.config import RayConfig, check_executor


@dataclass(frozen=True)
class Job:
    """One independent unit of work: ``fn(*args)``, a module-level function (Ray ships it to
    its worker by reference), and what it asks of the machine."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class Outcome:
    key: str
    value: Any = None
    error: str | None = None  # "ExceptionType: message" when the job raised

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    def check(self, num_cpus: float, num_gpus: float, what: str) -> None:
        """Refuse, before any work, a job request that could never be scheduled."""
        ...

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        """Each job's outcome, as soon as it is known."""
        ...


class LocalExecutor:
    """The jobs one after the other in this process, in order."""

    def check(self, num_cpus: float, num_gpus: float, what: str) -> None:
        """Nothing to check: a local job's device is checked where it is resolved."""

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        for job in jobs:
            try:
                yield Outcome(job.key, value=job.fn(*job.args))
            except Exception as err:  # reported as the job's failure; the others go on
                traceback.print_exc()
                yield Outcome(job.key, error=describe(err))


class RayExecutor:
    """The jobs as Ray tasks, each with its own CPUs/GPUs; outcomes in the order they end.

    A job runs in the driver's working directory where that exists on its node, so the
    relative paths of configs (datasets, run folders) mean the same as in a local run."""

    def __init__(self, cfg: RayConfig) -> None:
        connect(cfg)

    def check(self, num_cpus: float, num_gpus: float, what: str) -> None:
        check_resources(num_cpus, num_gpus, what)

    def run(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        import ray

        for job in jobs:  # every request checked before the first job starts
            self.check(job.num_cpus, job.num_gpus, f"job {job.key!r}")
        remote = ray.remote(max_retries=0)(_call)
        cwd = os.getcwd()
        pending = {
            remote.options(num_cpus=job.num_cpus, num_gpus=job.num_gpus).remote(
                job.fn, job.args, cwd
            ): job.key
            for job in jobs
        }
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(ref)
            try:
                yield Outcome(key, value=ray.get(ref))
            except ray.exceptions.RayTaskError as err:
                yield Outcome(key, error=describe(err.cause or err))
            except ray.exceptions.RayError as err:  # the worker died (killed, out of memory)
                yield Outcome(key, error=describe(err))


def make_executor(kind: str, ray: RayConfig) -> Executor:
    check_executor(kind, ray)
    return RayExecutor(ray) if kind == "ray" else LocalExecutor()


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _call(fn: Callable[..., Any], args: tuple, cwd: str) -> Any:
    """A job on a Ray worker, in the driver's working directory when this node has it."""
    if os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(*args)
