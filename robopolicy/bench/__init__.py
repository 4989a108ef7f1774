"""Benchmark suites behind ``robopolicy bench SUITE``.

Each suite reads ``configs/bench/<suite>.yaml`` (plus overrides), measures, and writes
``results.json``, ``report.md`` and PNG plots under ``runs/bench/<suite>/<timestamp>/``.
"""

from __future__ import annotations

import importlib

from robopolicy.config import CONFIG_DIR, ConfigError, load_config
from robopolicy.threads import set_num_threads

SUITES = {
    "sim": "robopolicy.bench.sim",
    "bc": "robopolicy.bench.bc",
    "rti": "robopolicy.bench.rti",
    "rti_flow": "robopolicy.bench.rti",  # the same comparison on flow-matching checkpoints
    "deploy": "robopolicy.bench.deploy",
    "rl": "robopolicy.bench.rl",  # every online RL method: residual, DSRL-SAC, DSRL-NA, EXPO
    "residual": "robopolicy.bench.rl",
    "dsrl": "robopolicy.bench.rl",
    "dsrl_gpu": "robopolicy.bench.rl",  # the same comparison at the papers' scale, on CUDA
    "pgd": "robopolicy.bench.pgd",
    "pgd_scaling": "robopolicy.bench.pgd",  # the dynamics-error table alone (scaling.*)
    "pgd_scaling_gpu": "robopolicy.bench.pgd",  # the same table at GPU sizes (device=auto)
    "reliability": "robopolicy.bench.reliability",
    "robosuite": "robopolicy.bench.robosuite",  # the field's tasks: bc, rti, rl, throughput
}


def run_suite(name: str, overrides: list[str] | None = None) -> dict:
    """Run one suite by name and return its results."""
    if name not in SUITES:
        raise ConfigError(f"unknown benchmark suite {name!r}; available: {sorted(SUITES)}")
    module = importlib.import_module(SUITES[name])
    cfg = load_config(CONFIG_DIR / "bench" / f"{name}.yaml", module.Config, overrides)
    set_num_threads(cfg.num_threads)  # this process's; each suite sets its runs' own
    return module.run(cfg)
