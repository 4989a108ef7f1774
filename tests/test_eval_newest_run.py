"""``robopolicy eval runs/<name>``: the parent of a recipe's timestamped runs means its newest."""

from __future__ import annotations

import shutil
from pathlib import Path

from robopolicy.checkpoint import resolve_checkpoint
from robopolicy.cli import main


def _two_runs(tiny_run: Path, root: Path) -> tuple[Path, Path, Path]:
    """``root/runs/lift/`` holding two copies of ``tiny_run`` named as training names them."""
    runs = root / "runs" / "lift"
    older, newer = runs / "20261201-090000", runs / "20261202-083000"
    for run in (older, newer):
        shutil.copytree(tiny_run, run, symlinks=True)
    return runs, older, newer


def test_a_recipes_folder_resolves_to_its_newest_run(tiny_run, tmp_path) -> None:
    runs, _, newer = _two_runs(tiny_run, tmp_path)
    assert resolve_checkpoint(runs) == (newer / "checkpoints" / "last").resolve()


def test_eval_of_a_recipes_folder_evaluates_its_newest_run(tiny_run, tmp_path) -> None:
    runs, older, newer = _two_runs(tiny_run, tmp_path)
    assert main(["eval", str(runs), "n_episodes=1", "video_episodes=0"]) in (0, None)
    assert list(newer.glob("eval-*/eval.json"))
    assert not list(older.glob("eval-*"))
