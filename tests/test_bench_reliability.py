"""``robopolicy bench reliability`` on a minimal setting: every section runs against a live
server and passes, and results.json and report.md are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robopolicy.bench import run_suite
from robopolicy.bench.reliability import _exactness_verdict, sections
from robopolicy.config import ConfigError


def test_bench_reliability_runs_every_server_section_against_a_live_server(tmp_path) -> None:
    """The server sections on a minimal setting (the kill -9 / resume sections call the
    functions that tests/test_train.py and tests/test_residual.py check on their own)."""
    results = run_suite(
        "reliability",
        [
            "only=[fuzz,extreme_values,non_reading_clients]",
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
    assert Path(results["checkpoint"]).is_dir()


def test_resume_sections_run_between_the_server_sections_and_judge_exactness() -> None:
    assert [s.__name__ for s in sections()] == [
        "fuzz",
        "extreme_values",
        "bc_resume",
        "rl_resume",
        "non_reading_clients",
    ]
    exact = {"max_abs_diff": 0.0, "tensors": 9, "steps": 48, "killed_at": 8}
    assert _exactness_verdict({**exact, "duplicate_log_rows": 0})["ok"]
    assert not _exactness_verdict({**exact, "duplicate_log_rows": 2})["ok"]
    off = _exactness_verdict({**exact, "max_abs_diff": 1.2e-7, "duplicate_log_rows": 0})
    assert not off["ok"] and "max abs Δ = 1.2e-07 over 9 tensors" in off["summary"]


def test_unknown_resume_method_is_refused_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"resume_methods \['ppo'\]"):
        run_suite("reliability", [f"out_root={tmp_path}", "resume_methods=[ppo]"])
    assert not (tmp_path / "reliability").exists()
