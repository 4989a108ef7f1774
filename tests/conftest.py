"""Shared fixtures. Tests run on the CPU; rendering uses EGL on Mesa llvmpipe where no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from bc_fixtures import tiny_train_config

import robopolicy  # noqa: F401  (registers the tasks)
from envs import TASKS
from robopolicy.sim.collect import CollectConfig, collect
from robopolicy.training.bc import train_bc


@pytest.fixture(params=sorted(TASKS))
def env_id(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def lift_demos(tmp_path_factory) -> str:
    """Four expert demonstrations of Lift."""
    out = tmp_path_factory.mktemp("data") / "lift.hdf5"
    collect(CollectConfig(env_id="robopolicy/Lift-v0", n_demos=4, output=str(out)), progress=False)
    return str(out)


@pytest.fixture(scope="session")
def tiny_run(lift_demos, tmp_path_factory) -> Path:
    """A tiny diffusion policy trained 10 steps on ``lift_demos``."""
    run_dir = tmp_path_factory.mktemp("run")
    train_bc(tiny_train_config(lift_demos, run_dir, "optim.steps=10", "loop.save_every=10"))
    return run_dir


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray (2 CPUs, no dashboard) for the whole test session: its start-up (a few
    seconds) is paid once; it is shut down when the session ends. Its workers import the test
    modules (their jobs are test functions) from tests/."""
    import os

    from robopolicy.distributed import RayConfig
    from robopolicy.distributed.cluster import connect, shutdown

    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", path)
        connect(RayConfig(local_cpus=2))
    yield
    shutdown()
