"""Atomic file output: write to a temporary sibling, then rename, so a crash never leaves a
half-written file where a complete one is expected."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_figure(fig, path: str | Path, dpi: int) -> Path:
    """A matplotlib figure, in the format its file name's suffix names."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
