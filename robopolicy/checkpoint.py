"""The checkpoint format: a directory, no pickle anywhere.

    <run>/checkpoints/<step>/      and <run>/checkpoints/last -> <step>
      config.yaml              resolved config that built the model (policy, shapes, task, train)
      model.safetensors        policy weights (EMA weights where EMA is used), normaliser excluded
      normalizer.safetensors   normalisation statistics
      meta.json                package/torch versions, git commit, step, metrics at save time,
                               and for a BC policy its type and training objective
      training_state/          everything an exact resume needs (safetensors + state.json)
    <run>/checkpoints/best/        an RL run's actor at its best eval (no training_state/)

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written one. Loading is strict: a key mismatch is an error listing the
missing and unexpected keys, never a silently untrained model.

A BC policy's weights are tied to the kind of policy that trained them: diffusion and flow
networks of one backbone have the same keys and shapes, so strict loading alone would run flow
weights as a denoiser. ``meta.json`` and the header of ``model.safetensors`` record the policy
type and training objective, and loading refuses weights whose record disagrees with
``config.yaml``. Checkpoints saved before the record existed load on their ``config.yaml`` alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from robopolicy import __version__
from robopolicy.config import ConfigError
from robopolicy.provenance import git_commit

NORMALIZER_PREFIX = "normalizer."
IDENTITY_KEYS = ("policy_type", "objective")
"""What ``meta.json`` and the weights' header record about the policy that trained them."""


BEST = "best"  # <run>/checkpoints/best: an RL run's actor at its best eval
CHECKPOINT_PICKS = ("last", BEST)


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
    point_last: bool = True,
) -> Path:
    """Write ``<directory>`` atomically and point ``<directory>/../last`` at it (unless
    ``point_last`` is False: ``checkpoints/best`` is written beside the run's steps, not as one).

    ``model_state`` is the policy's full state dict (normaliser buffers included: they are
    split into ``normalizer.safetensors``). ``training_state`` maps names to either a dict of
    tensors (saved as ``<name>.safetensors``) or JSON-serialisable values (``state.json``).
    """
    directory = Path(directory)
    config = OmegaConf.to_container(OmegaConf.create(_plain(config)), resolve=True)
    identity = policy_identity(config)
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
        save_file(_contiguous(weights), tmp / "model.safetensors", metadata=identity)
        save_file(_contiguous(stats), tmp / "normalizer.safetensors")
        yaml = OmegaConf.to_yaml(OmegaConf.create(config))
        (tmp / "config.yaml").write_text(yaml)
        meta = _meta(step, metrics) | (identity or {})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
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
    if point_last:
        _point_last(directory)
    return directory


def saved_steps(run_dir: str | Path) -> list[Path]:
    """The numbered checkpoints of a run, oldest first (none for a run that saved nothing)."""
    steps = [p for p in (Path(run_dir) / "checkpoints").glob("*") if p.name.isdigit()]
    return sorted(steps, key=lambda p: int(p.name))


def resolve_checkpoint(path: str | Path, pick: str = "last") -> Path:
    """Accept a checkpoint dir, a ``checkpoints/`` dir, a run dir, or ``runs/<name>`` (its newest
    run); return the checkpoint dir. ``pick``: ``last``, a run's final (newest) checkpoint, or
    ``best``, the one an RL run kept at its best eval (``<run>/checkpoints/best``); a path that
    ends in ``best`` (``<run>/best``, ``runs/<name>/best``) picks it too."""
    path = Path(path)
    if pick not in CHECKPOINT_PICKS:
        raise CheckpointError(f"checkpoint pick {pick!r} not in {CHECKPOINT_PICKS}")
    if path.name == BEST and not path.exists():
        path, pick = path.parent, BEST
    if pick == BEST:
        return _best_checkpoint(path)
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


def _best_checkpoint(path: Path) -> Path:
    """``checkpoints/best`` of the run that ``path`` names (or that its checkpoint is in)."""
    if (path / "model.safetensors").is_file() and path.name == BEST:
        return path.resolve()
    if (path / "model.safetensors").is_file():  # a step checkpoint: its run's best
        path = path.resolve().parent
    candidates = [path / BEST, path / "checkpoints" / BEST]
    runs = sorted(p.parents[2] for p in path.glob("*/checkpoints/last/model.safetensors"))
    if runs:  # runs/<name>/: its newest run
        candidates.append(runs[-1] / "checkpoints" / BEST)
    for candidate in candidates:
        if (candidate / "model.safetensors").is_file():
            return candidate.resolve()
    raise CheckpointError(
        f"no best checkpoint for {path}: only RL runs (robopolicy finetune) keep "
        f"checkpoints/{BEST}, at their best eval; tried {', '.join(map(str, candidates))}"
    )


def checkpoint_run(checkpoint: Path) -> Path | None:
    """The run that ``checkpoint`` (a resolved checkpoint dir) belongs to, ``<run>`` of
    ``<run>/checkpoints/<step>`` or ``<run>/checkpoints/best``; None for a checkpoint kept
    anywhere else (an export, a copy), whose parent folders are nobody's run and must not
    receive a run's outputs."""
    named = checkpoint.name.isdigit() or checkpoint.name == BEST
    if named and checkpoint.parent.name == "checkpoints":
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
    merged = merge_saved_config(checkpoint, schema, saved)
    merged.resume = str(checkpoint)
    merged.run_dir = run_dir
    return merged


def merge_saved_config(checkpoint: str | Path, schema: type, saved: dict[str, Any]):
    """``saved`` (read from the checkpoint's config.yaml) checked against ``schema``: a key this
    version does not know, or a value of the wrong type, is an error naming the file and key."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), saved)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"key {key!r}: " if key else ""
        raise ConfigError(
            f"{checkpoint}/config.yaml does not fit this version's {schema.__name__}: "
            f"{where}{str(err).splitlines()[0]}"
        ) from err


def read_meta(path: str | Path) -> dict[str, Any]:
    return json.loads((resolve_checkpoint(path) / "meta.json").read_text())


def load_state(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """``model`` or ``normalizer`` tensors of a checkpoint."""
    file = resolve_checkpoint(path) / f"{name}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    return load_state_file(file)


def load_state_file(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one safetensors file; a corrupt file is a ``CheckpointError`` naming it."""
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
    state = training_state_json(path)
    for file in directory.glob("*.safetensors"):
        state[file.stem] = load_state_file(file)
    return state


def training_state_json(path: str | Path) -> dict[str, Any]:
    """The plain (JSON) part of a checkpoint's training state, without its tensors."""
    file = resolve_checkpoint(path) / "training_state" / "state.json"
    if not file.is_file():
        raise CheckpointError(f"{file.parent}: no training state to resume from")
    try:
        state = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is corrupt: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is corrupt: not a JSON object")
    return state


@contextlib.contextmanager
def restoring(checkpoint: str | Path) -> Iterator[None]:
    """Turn what a training state that lacks an entry or holds the wrong one raises while a run
    restores it (KeyError, a tensor of the wrong shape, ...) into a ``CheckpointError`` naming
    the checkpoint, for the command line to print instead of a traceback."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as err:
        what = f"missing entry {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise CheckpointError(
            f"{checkpoint}/training_state is incomplete or corrupt ({what}); resume from an "
            "earlier checkpoint of the run"
        ) from err


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
    _check_identity(path, policy_identity({"policy": OmegaConf.to_container(policy_cfg)}))
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


def policy_identity(config: dict[str, Any]) -> dict[str, str] | None:
    """``{"policy_type", "objective"}`` of the BC policy a config builds (None for a config
    without a ``policy`` section, e.g. an RL run's). The objective is what the network was
    trained to output: diffusion's ``epsilon`` or ``sample``, flow matching's ``velocity``."""
    policy = config.get("policy") if isinstance(config, dict) else None
    if not isinstance(policy, dict) or "type" not in policy:
        return None
    kind = str(policy["type"])
    objective = "velocity" if kind == "flow" else str(policy.get("prediction_type", "epsilon"))
    return {"policy_type": kind, "objective": objective}


def _check_identity(path: Path, declared: dict[str, str]) -> None:
    """Refuse weights that ``meta.json`` or their own header records as trained by another kind
    of policy than ``config.yaml`` declares; records absent (older checkpoints) pass."""
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_file} is corrupt: {err}") from err
    try:
        with safe_open(path / "model.safetensors", "pt") as weights:
            header = weights.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read {path}/model.safetensors: {err}") from err
    for source, record in (("meta.json", meta), ("model.safetensors", header)):
        for key in IDENTITY_KEYS:
            if key in record and record[key] != declared[key]:
                raise CheckpointError(
                    f"{path}: config.yaml declares a {declared['policy_type']!r} policy trained "
                    f"on {declared['objective']!r}, but {source} records {key} "
                    f"{record[key]!r}: these weights belong to another kind of policy"
                )


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
