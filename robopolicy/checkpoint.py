"""The checkpoint format: a directory, no pickle anywhere.

    <run>/checkpoints/<step>/      and <run>/checkpoints/last -> <step>
      config.yaml              resolved config that built the model (policy, shapes, task, train)
      model.safetensors        policy weights (EMA weights where EMA is used), normaliser excluded
      normalizer.safetensors   normalisation statistics
      meta.json                package/torch versions, git commit, step, metrics at save time
      training_state/          everything an exact resume needs (safetensors + state.json)

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written one. Loading is strict: a key mismatch is an error listing the
missing and unexpected keys, never a silently untrained model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from robopolicy import __version__
from robopolicy.config import ConfigError
from robopolicy.provenance import git_commit

NORMALIZER_PREFIX = "normalizer."


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the model it claims to be."""


def save_checkpoint(
    directory: str | Path,
    model_state: dict[str, torch.Tensor],
    config: Any,
    *,
    step: int,
    metrics: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``<directory>`` atomically and point ``<directory>/../last`` at it.

    ``model_state`` is the policy's full state dict (normaliser buffers included: they are
    split into ``normalizer.safetensors``). ``training_state`` maps names to either a dict of
    tensors (saved as ``<name>.safetensors``) or JSON-serialisable values (``state.json``).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {k: v for k, v in model_state.items() if not k.startswith(NORMALIZER_PREFIX)}
        stats = {
            k[len(NORMALIZER_PREFIX) :]: v
            for k, v in model_state.items()
            if k.startswith(NORMALIZER_PREFIX)
        }
        save_file(_contiguous(weights), tmp / "model.safetensors")
        save_file(_contiguous(stats), tmp / "normalizer.safetensors")
        yaml = OmegaConf.to_yaml(OmegaConf.create(_plain(config)), resolve=True)
        (tmp / "config.yaml").write_text(yaml)
        (tmp / "meta.json").write_text(json.dumps(_meta(step, metrics), indent=2) + "\n")
        if training_state is not None:
            _save_training_state(tmp / "training_state", training_state)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _point_last(directory)
    return directory


def saved_steps(run_dir: str | Path) -> list[Path]:
    """The numbered checkpoints of a run, oldest first (none for a run that saved nothing)."""
    steps = [p for p in (Path(run_dir) / "checkpoints").glob("*") if p.name.isdigit()]
    return sorted(steps, key=lambda p: int(p.name))


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint dir, a ``checkpoints/`` dir, a run dir, or ``runs/<name>`` (its newest
    run); return the checkpoint dir."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path.resolve()
    # A run's newest numbered checkpoint, not ``last``: a kill between a checkpoint's rename
    # into place and the update of ``last`` leaves ``last`` one behind (or missing).
    for run in (path, path.parent if path.name == "checkpoints" else None):
        newest = [p for p in saved_steps(run) if (p / "model.safetensors").is_file()] if run else []
        if newest:
            return newest[-1].resolve()
    for candidate in (path / "last", path / "checkpoints" / "last"):
        if (candidate / "model.safetensors").is_file():
            return candidate.resolve()
    runs = sorted(p.parents[2] for p in path.glob("*/checkpoints/last/model.safetensors"))
    if runs:  # runs/<name>/: its newest run (run dirs are named by timestamp)
        return (runs[-1] / "checkpoints" / "last").resolve()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(
        f"{path} is not a checkpoint: no model.safetensors in it, in {path}/last or in "
        f"{path}/checkpoints/last"
    )


def checkpoint_run(checkpoint: Path) -> Path | None:
    """The run that ``checkpoint`` (a resolved checkpoint dir) belongs to, ``<run>`` of
    ``<run>/checkpoints/<step>``; None for a checkpoint kept anywhere else (an export, a copy),
    whose parent folders are nobody's run and must not receive a run's outputs."""
    if checkpoint.name.isdigit() and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return None


def read_config(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: config.yaml is missing")
    return OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)  # type: ignore[return-value]


def saved_config(checkpoint: Path, section: str, schema: type, run_dir: str | None = None):
    """The config a run saved in ``section``, as ``schema``, with ``resume`` pointing at the
    checkpoint: a resumed run continues exactly as it was set up. ``run_dir``: None goes on in
    the checkpoint's own run, a folder branches off there (``runlog.plan_run_dir``)."""
    saved = read_config(checkpoint).get(section)
    if saved is None:
        raise ConfigError(f"{checkpoint} is not a {section} checkpoint (no '{section}' section)")
    merged = OmegaConf.merge(OmegaConf.structured(schema), saved)
    merged.resume = str(checkpoint)
    merged.run_dir = run_dir
    return merged


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def load_state(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """``model`` or ``normalizer`` tensors of a checkpoint."""
    file = resolve_checkpoint(path) / f"{name}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        return load_file(file)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {file}: {err}") from err


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists the mismatched keys."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} ({len(missing)}), unexpected keys "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(f"{source} does not match the model: {err}") from err


def load_training_state(path: str | Path) -> dict[str, Any]:
    directory = resolve_checkpoint(path) / "training_state"
    if not (directory / "state.json").is_file():
        raise CheckpointError(f"{directory}: no training state to resume from")
    state: dict[str, Any] = json.loads((directory / "state.json").read_text())
    for file in directory.glob("*.safetensors"):
        state[file.stem] = load_file(file)
    return state


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", expected_type: str | None = None
):
    """Any BC checkpoint -> a ready policy in eval mode (EMA weights, normaliser checked)."""
    from robopolicy.data.normalizer import Normalizer
    from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy

    path = resolve_checkpoint(path)
    config = read_config(path)
    for section in ("policy", "shapes"):
        if section not in config:
            raise CheckpointError(f"{path}/config.yaml has no {section!r} section")
    try:
        policy_cfg = OmegaConf.merge(OmegaConf.structured(PolicyConfig), config["policy"])
        shapes = OmegaConf.merge(OmegaConf.structured(PolicyShapes), config["shapes"])
    except Exception as err:
        raise ConfigError(f"{path}/config.yaml: {err}") from err
    if expected_type is not None and policy_cfg.type != expected_type:
        raise CheckpointError(
            f"{path} holds a {policy_cfg.type!r} policy, not the expected {expected_type!r}"
        )
    try:
        normalizer = Normalizer.from_state_dict(load_state(path, "normalizer"))
    except ValueError as err:
        raise CheckpointError(f"{path}/normalizer.safetensors: {err}") from err
    policy = make_policy(OmegaConf.to_object(policy_cfg), OmegaConf.to_object(shapes), normalizer)
    weights = load_state(path, "model")
    state = {**weights, **{NORMALIZER_PREFIX + k: v for k, v in normalizer.state_dict().items()}}
    load_strict(policy, state, f"{path}/model.safetensors")
    return policy.to(device).eval()


# ---- internals --------------------------------------------------------------------------------
def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _plain(config: Any) -> Any:
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    if hasattr(config, "__dataclass_fields__"):
        return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)
    return config


def _meta(step: int, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "robopolicy": __version__,
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "step": int(step),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metrics": metrics or {},
    }


def _save_training_state(directory: Path, training_state: dict[str, Any]) -> None:
    directory.mkdir()
    plain: dict[str, Any] = {}
    for name, value in training_state.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, torch.Tensor) for v in value.values())
        ):
            save_file(_contiguous(value), directory / f"{name}.safetensors")
        else:
            plain[name] = value
    (directory / "state.json").write_text(json.dumps(plain) + "\n")


def _point_last(directory: Path) -> None:
    last = directory.parent / "last"
    tmp = directory.parent / f".last.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(directory.name)
    tmp.replace(last)
