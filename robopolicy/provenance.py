"""Which code produced a file: the git commit, marked ``-dirty`` when tracked files differ
from it, so a benchmark or checkpoint made from uncommitted edits (a config changed for a
probe) says so instead of naming a commit that did not produce it."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

_PACKAGE_DIR = Path(__file__).parent


def checkout_state(repo: Path) -> str | None:
    """Short HEAD commit of the checkout holding ``repo``, plus ``-dirty`` if tracked files
    changed; None outside a checkout (an installed wheel) or without git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=repo, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


@functools.cache
def git_commit() -> str | None:
    """This package's checkout state, read once per process: a run reads its code and configs
    when it starts, so an edit made while it runs must not change the stamp on what it saves
    (and a checkpoint save no longer pays for two git calls)."""
    return checkout_state(_PACKAGE_DIR)
