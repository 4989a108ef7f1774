"""The Ray settings that bench, eval and sweep configs embed (no ``ray`` import here, so a
config schema can carry them without loading Ray)."""

from __future__ import annotations

from dataclasses import dataclass

from robopolicy.config import ConfigError

EXECUTORS = ("local", "ray")


@dataclass
class RayConfig:
    """Where Ray runs and what each run asks of it.

    ``address``: empty starts Ray on this machine; ``auto`` joins the cluster this node belongs
    to (``ray start`` ran here); ``ray://host:port`` connects to a remote cluster's client server.
    """

    address: str = ""
    local_cpus: int | None = None  # CPUs of a Ray started here (default: all); unused when joining
    num_cpus: float = 1.0  # per run: Ray schedules no more runs at once than CPUs allow
    num_gpus: float | None = None  # per run; default: 1 for a run on CUDA, else 0


def check_executor(executor: str, ray: RayConfig) -> None:
    """Refuse an unknown executor or impossible per-run resources before any work starts."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if ray.num_cpus < 0 or (ray.num_gpus is not None and ray.num_gpus < 0):
        raise ConfigError(
            f"ray.num_cpus and ray.num_gpus must be >= 0, got {ray.num_cpus}, {ray.num_gpus}"
        )
    if ray.local_cpus is not None and ray.local_cpus < 1:
        raise ConfigError(f"ray.local_cpus must be >= 1, got {ray.local_cpus}")
