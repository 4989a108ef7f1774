"""Every command takes ``num_threads``, and OpenMP's idle threads sleep (robopolicy.threads)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

from robopolicy.bench import SUITES
from robopolicy.config import ConfigError
from robopolicy.rl.config import FinetuneConfig
from robopolicy.sim.collect import CollectConfig
from robopolicy.sim.evaluate import EvalConfig
from robopolicy.sim.rti_tune import RTITuneConfig
from robopolicy.threads import set_num_threads
from robopolicy.training.config import OptimConfig

PROBE = "import os, robopolicy; print(os.environ.get('OMP_WAIT_POLICY'))"


def _wait_policy(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    assert _wait_policy() == "PASSIVE"
    assert _wait_policy(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


@pytest.mark.parametrize(
    "schema",
    [CollectConfig, EvalConfig, RTITuneConfig, FinetuneConfig, OptimConfig]
    + sorted({importlib.import_module(m).Config for m in SUITES.values()}, key=repr),
    ids=lambda s: f"{s.__module__}.{s.__name__}",
)
def test_every_command_takes_num_threads(schema):
    assert schema.__dataclass_fields__["num_threads"].default == 0


def test_set_num_threads_applies_a_count_and_keeps_the_default_for_zero():
    before = torch.get_num_threads()
    try:
        assert set_num_threads(1) == 1
        assert set_num_threads(0) == 1  # 0 changes nothing
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="num_threads must be >= 0"):
        set_num_threads(-1)
