"""The command line: help, and errors that name the problem instead of a traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bc_fixtures import REPO, TINY_TRAIN_OVERRIDES

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


# ---- bad input through the real command line: rc 2 and one readable line, never a traceback --
@pytest.fixture(scope="module")
def rl_checkpoint(tiny_run, tmp_path_factory) -> Path:
    """A residual-RL run of a few env steps on ``tiny_run``: its last checkpoint."""
    run_dir = tmp_path_factory.mktemp("rl")
    overrides = [
        f"base={tiny_run}",
        f"run_dir={run_dir}",
        "env_steps=8",
        "warmup_steps=4",
        "critic_warmup_updates=1",
        "eval_every=0",
        "final_eval_episodes=1",
        "save_every=4",
        "num_threads=1",
        "agent.hidden_dim=16",
        "agent.critic_heads=2",
        "agent.batch_size=4",
    ]
    assert main(["finetune", "configs/rl/residual_lift.yaml", *overrides]) == 0
    return run_dir / "checkpoints" / "last"


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a run and its last checkpoint, to damage without touching the original."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    return copy, (copy / "checkpoints" / "last").resolve()


def _train(lift_demos: str, run_dir: Path, *extra: str) -> list[str]:
    config = str(REPO / "configs/train/lift_diffusion.yaml")
    data = [f"task.dataset={lift_demos}", f"run_dir={run_dir}", *TINY_TRAIN_OVERRIDES]
    return ["train", config, *data, *extra]


def _corrupt_state_json(checkpoint: Path) -> None:
    (checkpoint / "training_state" / "state.json").write_text("{ not json")


def _empty_state_json(checkpoint: Path) -> None:
    (checkpoint / "training_state" / "state.json").write_text("{}")


def _truncate_weights(checkpoint: Path) -> None:
    path = checkpoint / "training_state" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _unknown_saved_key(checkpoint: Path) -> None:
    path = checkpoint / "config.yaml"
    path.write_text(path.read_text() + "retired_option: 3\n")


@pytest.mark.parametrize(
    "damage",
    [_corrupt_state_json, _empty_state_json, _truncate_weights, _unknown_saved_key],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_train_resume_from_a_damaged_checkpoint(tiny_run, lift_demos, tmp_path, capsys, damage):
    run, checkpoint = _copy_run(tiny_run, tmp_path)
    damage(checkpoint)
    argv = _train(lift_demos, run, f"resume={run}", "optim.steps=12")
    _assert_one_error_line(main(argv), capsys, "train", str(checkpoint))


@pytest.mark.parametrize("step", ["0000004", "0000008"])  # mid-run, and the run's end
@pytest.mark.parametrize(
    "damage", [_corrupt_state_json, _empty_state_json], ids=lambda f: f.__name__.lstrip("_")
)
def test_finetune_resume_from_a_damaged_checkpoint(rl_checkpoint, tmp_path, capsys, damage, step):
    run, _ = _copy_run(rl_checkpoint.parent.parent, tmp_path)
    checkpoint = run / "checkpoints" / step
    damage(checkpoint)
    argv = ["finetune", "configs/rl/residual_lift.yaml", f"resume={checkpoint}"]
    _assert_one_error_line(main(argv), capsys, "finetune", str(checkpoint))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["loop.save_every=0"], "loop.save_every must be >= 1, got 0"),
        (["optim.steps=-5"], "optim.steps must be >= 1, got -5"),
    ],
)
def test_train_settings_that_cannot_run(lift_demos, tmp_path, capsys, extra, named) -> None:
    _assert_one_error_line(main(_train(lift_demos, tmp_path, *extra)), capsys, "train", named)


def test_export_of_an_rl_checkpoint_is_refused(rl_checkpoint, tmp_path, capsys) -> None:
    rc = main(["export", str(rl_checkpoint), str(tmp_path / "out"), "--no-onnx"])
    _assert_one_error_line(rc, capsys, "export", "is an RL checkpoint (residual")
    assert not (tmp_path / "out").exists()


def test_serve_on_an_impossible_port(tiny_run, capsys) -> None:
    rc = main(["serve", str(tiny_run), "port=99999"])
    _assert_one_error_line(rc, capsys, "serve", "port must be in 0..65535")


def test_serve_on_a_port_in_use(tiny_run, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = main(["serve", str(tiny_run), f"port={port}"])
    _assert_one_error_line(rc, capsys, "serve", f"cannot listen on 127.0.0.1:{port}")


def _assert_one_error_line(rc: int, capsys, command: str, named: str) -> None:
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"robopolicy {command}: error: ") and named in lines[0], lines[0]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_resume_help_lists_what_a_resume_may_change(command, capsys) -> None:
    from robopolicy.cli import _resumable_keys
    from robopolicy.rl.config import RESUMABLE as FINETUNE
    from robopolicy.training.config import RESUMABLE as TRAIN

    resumable = {"train": TRAIN, "finetune": FINETUNE}[command]
    assert [key.removesuffix(".*") for key in _resumable_keys(command)] == list(resumable)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"may change only {', '.join(_resumable_keys(command))};" in out and "run_dir=NEW" in out
