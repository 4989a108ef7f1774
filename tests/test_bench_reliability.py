"""``robopolicy bench reliability`` on a minimal setting: every section runs against a live
server and passes, and results.json and report.md are written."""

from __future__ import annotations

import json
from pathlib import Path

from robopolicy.bench import run_suite
from robopolicy.bench.reliability import RESUME_SECTIONS, sections


def test_bench_reliability_runs_every_section_against_a_live_server(tmp_path) -> None:
    results = run_suite(
        "reliability",
        [
            f"out_root={tmp_path}",
            "collect_overrides=[n_demos=2]",
            "train_overrides=[optim.steps=10,optim.batch_size=16,loop.save_every=10]",
            "fuzz_frames=60",
            "oversize_frames=1",
            "extreme_valid_steps=1",
            "non_reading_clients=2",
            "non_reading_seconds=4",
            "frame_bytes=65536",
            "server_overrides=[send_timeout_s=1]",
        ],
    )
    assert results["ok"], {k: v["summary"] for k, v in results["sections"].items()}
    fuzz = results["sections"]["fuzz"]
    assert fuzz["frames"] == 60 and fuzz["internal_errors"] == 0 and fuzz["alive_after"]
    assert fuzz["replies"]["connection closed"] == 1  # the oversize frame
    assert results["sections"]["extreme_values"]["non_finite_actions_sent"] == 0
    non_reading = results["sections"]["non_reading_clients"]
    assert non_reading["rss_peak_mib"] <= non_reading["rss_bound_mib"]
    assert non_reading["dropped_by_server"] == 2 and non_reading["alive_after"]
    out = next((tmp_path / "reliability").iterdir())
    assert json.loads((out / "results.json").read_text())["ok"]
    assert "| fuzz | ok |" in (out / "report.md").read_text()
    assert RESUME_SECTIONS == [] and [s.__name__ for s in sections()] == [
        "fuzz",
        "extreme_values",
        "non_reading_clients",
    ]
    assert Path(results["checkpoint"]).is_dir()
