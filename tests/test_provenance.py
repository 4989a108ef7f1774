"""The commit stamped on checkpoints and benchmark results says when uncommitted edits made them."""

from __future__ import annotations

import subprocess

from robopolicy import provenance


def _git(repo, *args: str) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True)


def test_commit_is_marked_dirty_only_while_tracked_files_differ(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(provenance, "_REPO", tmp_path)
    assert provenance.git_commit() is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    _git(tmp_path, "add", "config.yaml")
    _git(tmp_path, "commit", "-q", "-m", "first")
    clean = provenance.git_commit()
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert provenance.git_commit() == clean
    (tmp_path / "config.yaml").write_text("a: 2\n")
    assert provenance.git_commit() == f"{clean}-dirty"
