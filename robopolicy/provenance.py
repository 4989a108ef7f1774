"""Which code produced a file: the git commit, marked ``-dirty`` when tracked files differ
from it, so a benchmark or checkpoint made from uncommitted edits (a config changed for a
probe) says so instead of naming a commit that did not produce it."""

from __future__ import annotations

import subprocess
from pathlib import Path

_REPO = Path(__file__).parent


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_REPO, check=True)


def git_commit() -> str | None:
    """Short HEAD commit, plus ``-dirty`` if tracked files changed; None outside a checkout."""
    try:
        commit = _git("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = _git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit
