"""Starting or joining Ray, and checking what runs ask of it, with errors that say what is
wrong before any run starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from robopolicy.config import ConfigError
from robopolicy.distributed.config import RayConfig

# the folder that holds the robopolicy package: Ray workers started here import it from there
SOURCE_ROOT = str(Path(__file__).resolve().parents[2])


def connect(cfg: RayConfig) -> None:
    """Start Ray on this machine (``address`` empty) or join a cluster; a process that already
    has Ray (a test session's, an earlier bench in the same process) keeps it."""
    import ray

    if ray.is_initialized():
        return
    common = {"include_dashboard": False, "logging_level": "WARNING"}
    if not cfg.address:
        path = os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=cfg.local_cpus,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
            **common,
        )
        return
    _check_reachable(cfg.address)
    try:
        ray.init(address=cfg.address, **common)
    except ConnectionError as err:
        raise ConfigError(
            f"ray.address={cfg.address!r}: no Ray cluster there ({err}); start one with "
            "`ray start --head`, or leave ray.address empty to run Ray on this machine"
        ) from err


def _check_reachable(address: str) -> None:
    """A host:port that refuses connections fails in a second, not after Ray's 30-60 s of
    retries."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"ray.address={address!r}: expected 'auto', 'host:port' or 'ray://host:port'"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError(
            f"ray.address={address!r}: no Ray cluster there ({err}); start one with "
            "`ray start --head`, or leave ray.address empty to run Ray on this machine"
        ) from err


def check_resources(num_cpus: float, num_gpus: float, what: str) -> None:
    """A run that asks for more CPUs or GPUs than any node of the cluster has would wait
    forever: refuse it now, naming the run and what the cluster has."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for name, wanted in (("CPU", num_cpus), ("GPU", num_gpus)):
        largest = max((node.get(name, 0.0) for node in nodes), default=0.0)
        if wanted > largest:
            raise ConfigError(
                f"{what} asks for {wanted:g} {name}(s) per run, but the largest node of the "
                f"Ray cluster has {largest:g}"
            )


def shutdown() -> None:
    """Leave Ray (a local Ray stops with it)."""
    import ray

    ray.shutdown()
