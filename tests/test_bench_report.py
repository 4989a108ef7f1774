"""Where benchmark results land."""

from __future__ import annotations

from robopolicy.bench import report


def test_benches_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report.time, "strftime", lambda fmt: "20261126-120000")
    folders = [report.new_run_dir(tmp_path, "dsrl") for _ in range(3)]
    stamp = "20261126-120000"
    assert [f.name for f in folders] == [stamp, f"{stamp}-2", f"{stamp}-3"]
    assert all(f.is_dir() and f.parent == tmp_path / "dsrl" for f in folders)


def test_every_report_names_its_machine_commit_and_date() -> None:
    machine = {
        "cpu": "Intel Xeon",
        "cores": 2,
        "torch": "2.14.1",
        "git_commit": "abc1234",
        "date": "2026-12-07",
    }
    assert report.machine_line(machine) == (
        "Machine: Intel Xeon, 2 cores; torch 2.14.1; commit abc1234; 2026-12-07."
    )
