"""What a resumed run keeps and what it may change.

A resume goes on with the run's saved config: every setting that changes the arithmetic (model,
data, optimiser, seeds, thread count) comes from the checkpoint, whatever the config file or
the command line says, so that a resumed run is the run it continues, bit for bit. Each command
names the few settings a resume may change (how long to train; how often to log, evaluate and
save); ``run_dir`` branches off into a new folder, and ``resume`` names the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from robopolicy.checkpoint import merge_saved_config, read_config, resolve_checkpoint
from robopolicy.config import ConfigError, apply_override, load_config

T = TypeVar("T")
ALWAYS_RESUMABLE = ("resume", "run_dir")


def resumed_config(
    cfg: Any,
    checkpoint: Path,
    schema: type[T],
    resumable: Sequence[str],
    section: str | None = None,
    derived: Sequence[str] = (),
) -> T:
    """The config ``checkpoint`` was saved with (its ``section``, or the whole file less the
    ``derived`` sections a run computes itself), with the ``resumable`` keys (dotted; a group
    name covers the group) and ``run_dir`` taken from ``cfg``, and ``resume`` naming the
    checkpoint: the parent a branch records. What ``train_bc`` and ``finetune`` run: their
    callers hand a whole config, whose resumable settings are what they ask for (the command
    line builds one with ``load_run_config``, which keeps the saved values unless overridden)."""
    merged = _saved(checkpoint, schema, section, derived)
    given = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)  # or a dataclass
    for key in resumable:
        OmegaConf.update(merged, key, OmegaConf.select(given, key), merge=False)
    merged.run_dir = cfg.run_dir
    merged.resume = str(checkpoint)
    return merged  # type: ignore[return-value]


def load_run_config(
    path: str | Path,
    schema: type[T],
    overrides: list[str],
    resumable: Sequence[str],
    section: str | None = None,
    derived: Sequence[str] = (),
) -> T:
    """The config of ``robopolicy <command> CONFIG [key=value ...]``: the file with the
    overrides for a new run; for a resume (``resume=``), the saved config with the overrides,
    which may set only the ``resumable`` keys, ``run_dir`` and ``resume`` (others may repeat
    the saved value; the file's own settings give way to the saved ones)."""
    cfg = load_config(path, schema, overrides)
    if not cfg.resume:  # type: ignore[attr-defined]
        return cfg
    checkpoint = resolve_checkpoint(cfg.resume)  # type: ignore[attr-defined]
    allowed = (*ALWAYS_RESUMABLE, *resumable)
    merged = _saved(checkpoint, schema, section, derived)
    merged.run_dir = None  # the checkpoint's own run, unless the overrides branch off
    for override in overrides:
        key = override.partition("=")[0].strip()
        if any(key == a or key.startswith(f"{a}.") for a in allowed):
            apply_override(merged, override)
            continue
        probe = merged.copy()
        apply_override(probe, override)
        if OmegaConf.select(probe, key) != OmegaConf.select(merged, key):  # a repeat may stay
            raise ConfigError(
                f"{key} cannot change on a resume: the run set it to "
                f"{OmegaConf.select(merged, key)!r} (config saved in {checkpoint}) and goes on "
                f"as it began. A resume may set only {', '.join(allowed)}; start a new run "
                f"to change {key}"
            )
    merged.resume = str(checkpoint)
    return merged  # type: ignore[return-value]


def _saved(checkpoint: Path, schema: type, section: str | None, derived: Sequence[str]):
    saved = read_config(checkpoint)
    if section is not None:
        if section not in saved:
            raise ConfigError(
                f"{checkpoint} is not a {section} checkpoint (no {section!r} section)"
            )
        saved = saved[section]
    saved = {k: v for k, v in saved.items() if k not in derived}
    return merge_saved_config(checkpoint, schema, saved)
