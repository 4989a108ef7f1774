"""Every shipped config parses against its schema (a typo in a YAML key fails here, not an hour
into a benchmark)."""

from __future__ import annotations

import importlib

import pytest

from robopolicy.bench import SUITES
from robopolicy.config import CONFIG_DIR, load_config
from robopolicy.rl.config import FinetuneConfig
from robopolicy.sim.collect import CollectConfig
from robopolicy.sim.evaluate import EvalConfig
from robopolicy.synth.config import OfflineConfig, SynthConfig
from robopolicy.synth.make_data import OfflineDataConfig
from robopolicy.training.config import TrainConfig

SCHEMAS = {
    "collect": CollectConfig,
    "train": TrainConfig,
    "rl": FinetuneConfig,
    "eval": EvalConfig,
    "synth": SynthConfig,
}


def _schema(path):
    folder = path.parent.name
    if folder == "offline":  # datasets and agent runs share the folder
        is_run = path.stem.startswith(("td3bc", "iql")) or path.stem == "gpu"
        return OfflineConfig if is_run else OfflineDataConfig
    if folder == "bench":
        return importlib.import_module(SUITES[path.stem]).Config
    return SCHEMAS.get(folder)


SHIPPED = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if _schema(p) is not None)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_shipped_config_parses(path) -> None:
    load_config(path, _schema(path))


@pytest.mark.parametrize(
    "name", ["dsrl_na_lift", "dsrl_sac_lift", "dsrl_na_pickplace", "dsrl_sac_pickplace"]
)
def test_dsrl_configs_sample_noise_and_leave_entropy_out_of_the_target(name) -> None:
    cfg = load_config(CONFIG_DIR / "rl" / f"{name}.yaml", FinetuneConfig)
    assert cfg.dsrl_sample_noise and not cfg.agent.backup_entropy
