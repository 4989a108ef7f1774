"""Config loading: composition, overrides, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from robopolicy.bench.rti import Config as RTIBenchConfig
from robopolicy.config import CONFIG_DIR, ConfigError, load_config
from robopolicy.sim.collect import CollectConfig


def test_defaults_compose_and_overrides_apply() -> None:
    cfg = load_config(CONFIG_DIR / "collect/lift_pixels.yaml", CollectConfig, ["n_demos=7"])
    assert cfg.env_id == "robopolicy/Lift-v0"  # from the default file
    assert cfg.env_kwargs["obs_type"] == "both"  # from the file itself
    assert cfg.n_demos == 7  # from the command line


def test_unknown_key_is_an_error(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("env_id: robopolicy/Lift-v0\noutput: x.hdf5\nn_demo: 3\n")
    with pytest.raises(ConfigError, match=r"n_demo.*|bad.yaml"):
        load_config(path, CollectConfig)
    good = tmp_path / "good.yaml"
    good.write_text("env_id: robopolicy/Lift-v0\noutput: x.hdf5\n")
    with pytest.raises(ConfigError, match="noize"):
        load_config(good, CollectConfig, ["noize=0.1"])
    with pytest.raises(ConfigError, match="n_demos"):
        load_config(good, CollectConfig, ["n_demos=many"])


def test_missing_required_and_missing_file(tmp_path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("env_id: robopolicy/Lift-v0\n")
    with pytest.raises(ConfigError, match="output"):
        load_config(path, CollectConfig)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", CollectConfig)


def test_override_addresses_list_items_by_index() -> None:
    path = CONFIG_DIR / "bench/rti.yaml"
    cfg = load_config(path, RTIBenchConfig, ["tasks.1.checkpoint=runs/x", "eval_episodes=7"])
    assert cfg.tasks[1].checkpoint == "runs/x"
    assert cfg.tasks[0].checkpoint is None
    assert cfg.eval_episodes == 7
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.bogus"):
        load_config(path, RTIBenchConfig, ["tasks.0.bogus=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, RTIBenchConfig, ["checkpoint"])
