"""The commit stamped on checkpoints and benchmark results says when uncommitted edits made them."""

from __future__ import annotations

import subprocess

from robopolicy.provenance import checkout_state, git_commit


def _git(repo, *args: str) -> None:
    identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True)


def test_commit_is_marked_dirty_only_while_tracked_files_differ(tmp_path) -> None:
    assert checkout_state(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    _git(tmp_path, "add", "config.yaml")
    _git(tmp_path, "commit", "-q", "-m", "first")
    clean = checkout_state(tmp_path)
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert checkout_state(tmp_path) == clean
    (tmp_path / "config.yaml").write_text("a: 2\n")
    assert checkout_state(tmp_path) == f"{clean}-dirty"


def test_the_package_stamp_is_read_once_per_process() -> None:
    git_commit.cache_clear()
    first = git_commit()
    assert git_commit.cache_info().misses == 1
    assert git_commit() == first and git_commit.cache_info().hits == 1
