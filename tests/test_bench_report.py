"""Where benchmark results land."""

from __future__ import annotations

from robopolicy.bench import report


def test_benches_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report.time, "strftime", lambda fmt: "20261126-120000")
    folders = [report.new_run_dir(tmp_path, "dsrl") for _ in range(3)]
    stamp = "20261126-120000"
    assert [f.name for f in folders] == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert all(f.is_dir() and f.parent == tmp_path / "dsrl" for f in folders)
