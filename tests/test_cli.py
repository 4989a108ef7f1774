"""The command line: help, and errors that name the problem instead of a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from robopolicy.cli import main


def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("collect", "eval", "bench"):
        assert command in out


def test_bad_config_key_is_a_clear_error(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("env_id: robopolicy/Lift-v0\noutput: x.hdf5\nn_demoz: 3\n")
    assert main(["collect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "n_demoz" in err and "Traceback" not in err


def test_unknown_bench_suite(capsys) -> None:
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark suite 'nope'" in capsys.readouterr().err


def test_console_script_runs_eval(tmp_path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "robopolicy",
            "eval",
            "configs/eval/lift_expert.yaml",
            "n_episodes=2",
            "video_episodes=0",
            f"out_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "success 100%" in out.stdout and (tmp_path / "eval.json").exists()


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_resume_help_lists_what_a_resume_may_change(command, capsys) -> None:
    from robopolicy.cli import RESUME_HELP
    from robopolicy.rl.config import RESUMABLE as FINETUNE
    from robopolicy.training.config import RESUMABLE as TRAIN

    resumable = {"train": TRAIN, "finetune": FINETUNE}[command]
    assert [key.removesuffix(".*") for key in RESUME_HELP[command]] == list(resumable)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"may change only {', '.join(RESUME_HELP[command])};" in out and "run_dir=NEW" in out
