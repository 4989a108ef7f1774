"""Checkpoints: round trip, atomic writes, strict loading with errors that list the keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from bc_fixtures import SHAPES, tiny_obs, tiny_policy
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from robopolicy.checkpoint import (
    CheckpointError,
    checkpoint_run,
    load_policy,
    resolve_checkpoint,
    save_checkpoint,
)


def _save(policy, path):
    config = {"policy": policy.cfg.__dict__, "shapes": SHAPES.__dict__}
    return save_checkpoint(path, policy.state_dict(), config, step=3, metrics={"loss": 0.5})


@pytest.mark.parametrize("policy_type", ["diffusion", "flow"])
def test_round_trip_gives_the_same_chunks(tmp_path, policy_type) -> None:
    policy = tiny_policy(policy_type).eval()
    path = _save(policy, tmp_path / "checkpoints" / "0000003")
    loaded = load_policy(tmp_path)  # a run dir resolves through checkpoints/last
    obs, noise = tiny_obs(), torch.randn(3, 8, 2)
    torch.testing.assert_close(loaded.predict_chunk(obs, noise), policy.predict_chunk(obs, noise))
    assert (tmp_path / "checkpoints" / "last").resolve() == path.resolve()
    assert json.loads((path / "meta.json").read_text())["step"] == 3
    assert "normalizer.actions" not in str(load_file(path / "model.safetensors").keys())


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path) -> None:
    policy = tiny_policy()
    _save(policy, tmp_path / "ck")
    _save(policy, tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "last"]


def test_strict_loading_lists_the_keys(tmp_path) -> None:
    path = _save(tiny_policy(), tmp_path / "ck")
    weights = load_file(path / "model.safetensors")
    name = next(iter(weights))
    weights["surprise"] = weights.pop(name)
    save_file(weights, path / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=f"missing keys \\['{name}'\\].*unexpected keys \\['surprise'\\]"
    ):
        load_policy(path)


def test_wrong_type_missing_and_bad_statistics(tmp_path) -> None:
    path = _save(tiny_policy("flow"), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="'flow' policy, not the expected 'diffusion'"):
        load_policy(path, expected_type="diffusion")
    with pytest.raises(CheckpointError, match="not found"):
        load_policy(tmp_path / "nowhere")
    stats = load_file(path / "normalizer.safetensors")
    key = next(k for k in stats if "actions" in k)
    stats[key] = torch.full_like(stats[key], float("nan"))
    save_file(stats, path / "normalizer.safetensors")
    with pytest.raises(CheckpointError, match="actions"):
        load_policy(path)


def test_meta_and_weights_record_the_policy_type_and_objective(tmp_path) -> None:
    for policy_type, objective in (("diffusion", "epsilon"), ("flow", "velocity")):
        path = _save(tiny_policy(policy_type), tmp_path / policy_type)
        meta = json.loads((path / "meta.json").read_text())
        assert (meta["policy_type"], meta["objective"]) == (policy_type, objective)
        with safe_open(path / "model.safetensors", "pt") as weights:
            assert weights.metadata() == {"policy_type": policy_type, "objective": objective}
    path = _save(tiny_policy(prediction_type="sample"), tmp_path / "sample")
    assert json.loads((path / "meta.json").read_text())["objective"] == "sample"


def test_weights_of_another_policy_type_are_refused(tmp_path) -> None:
    """Flow and diffusion networks of one backbone share keys and shapes: only the record
    tells flow weights in a diffusion checkpoint apart."""
    diffusion = _save(tiny_policy("diffusion"), tmp_path / "diffusion")
    flow = _save(tiny_policy("flow"), tmp_path / "flow")
    shutil.copy(flow / "model.safetensors", diffusion / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors records policy_type 'flow'"):
        load_policy(diffusion)
    # meta.json contradicting config.yaml is refused as well
    meta = json.loads((flow / "meta.json").read_text())
    (flow / "meta.json").write_text(json.dumps({**meta, "objective": "epsilon"}))
    with pytest.raises(CheckpointError, match="meta.json records objective 'epsilon'"):
        load_policy(flow)


def test_checkpoints_saved_before_the_record_still_load(tmp_path) -> None:
    policy = tiny_policy("flow").eval()
    path = _save(policy, tmp_path / "old")
    save_file(load_file(path / "model.safetensors"), path / "model.safetensors")  # no header
    meta = json.loads((path / "meta.json").read_text())
    for key in ("policy_type", "objective"):
        del meta[key]
    (path / "meta.json").write_text(json.dumps(meta))
    obs, noise = tiny_obs(), torch.randn(3, 8, 2)
    torch.testing.assert_close(
        load_policy(path).predict_chunk(obs, noise), policy.predict_chunk(obs, noise)
    )


def test_a_run_resolves_to_its_newest_checkpoint_when_last_lags(tmp_path) -> None:
    """A kill between a checkpoint's rename into place and the update of ``last`` leaves
    ``last`` one behind: the run's newest numbered checkpoint is the one to go on from."""
    policy = tiny_policy()
    _save(policy, tmp_path / "checkpoints" / "0000003")
    newest = _save(policy, tmp_path / "checkpoints" / "0000006")
    (tmp_path / "checkpoints" / "last").unlink()
    (tmp_path / "checkpoints" / "last").symlink_to("0000003")
    assert resolve_checkpoint(tmp_path) == newest.resolve()
    assert resolve_checkpoint(tmp_path / "checkpoints") == newest.resolve()
    assert checkpoint_run(newest.resolve()) == tmp_path.resolve()
    assert checkpoint_run(tmp_path.resolve()) is None
