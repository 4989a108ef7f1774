"""BC training end to end on a tiny Lift dataset: outputs, exact resume, NaN stop, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bc_fixtures import REPO, TINY_TRAIN_OVERRIDES
from bc_fixtures import tiny_train_config as _config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from robopolicy.bench.resume_exactness import bc_resume_exactness
from robopolicy.checkpoint import load_policy, resolve_checkpoint, saved_steps
from robopolicy.cli import main
from robopolicy.config import ConfigError
from robopolicy.data.hdf5 import DatasetError, load_episodes, read_env_args, write_dataset
from robopolicy.runlog import RunLogger
from robopolicy.training.bc import TrainingDivergedError, train_bc

CONFIG = str(REPO / "configs/train/lift_diffusion.yaml")


def test_training_writes_checkpoints_logs_and_eval(lift_demos, tmp_path, capsys) -> None:
    cfg = _config(
        lift_demos,
        tmp_path,
        "optim.steps=20",
        "loop.save_every=10",
        "loop.final_eval_episodes=2",
        "loop.video_episodes=1",
    )
    result = train_bc(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "0000010",
        "0000020",
        "last",
    ]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert all(0 <= r["train/data_wait_share"] < 1 for r in train_rows)
    assert result["eval"]["n_episodes"] == 2 and (tmp_path / "eval" / "eval.json").exists()
    assert any((tmp_path / "tensorboard").iterdir())
    policy = load_policy(tmp_path)
    assert policy.cfg.pred_horizon == 8 and policy.shapes.action_dim == 4
    # The CLI evaluates a run directory (its last checkpoint) on the task it was trained on,
    # into a folder named by the checkpoint's step and how the policy ran, and says where.
    assert main(["eval", str(tmp_path), "n_episodes=2", "video_episodes=0"]) == 0
    chunked = tmp_path / "eval-0000020-diffusion-unet-ddim-4-chunked-4" / "eval.json"
    assert f"-> {chunked}" in capsys.readouterr().out
    saved = json.loads(chunked.read_text())
    assert saved["env_id"] == "robopolicy/Lift-v0"
    assert saved["agent"] == "diffusion-unet ddim-4 chunked(4)"
    # ... and runs it with RTI: the trained DDPM chain, re-planned every step from K' = 2,
    # whose results go next to the chunked eval's instead of replacing them.
    rti = ["execution.mode=rti", "execution.sampler=ddpm", "execution.num_inference_steps=20"]
    overrides = [*rti, "execution.rti_start_step=2"]
    assert main(["eval", str(tmp_path), "n_episodes=2", "video_episodes=0", *overrides]) == 0
    rti_dir = tmp_path / "eval-0000020-diffusion-unet-ddpm-20-rti-k-2"
    saved = json.loads((rti_dir / "eval.json").read_text())
    assert saved["agent"] == "diffusion-unet ddpm-20 rti(K'=2)"
    assert json.loads(chunked.read_text())["agent"] == "diffusion-unet ddim-4 chunked(4)"
    # Other settings into a folder that holds results are refused; the same ones write again.
    before = chunked.read_text()
    assert main(["eval", str(tmp_path), "n_episodes=1", "video_episodes=0"]) == 2
    assert "settings that differ: n_episodes" in capsys.readouterr().err
    assert chunked.read_text() == before
    assert main(["eval", str(tmp_path), "n_episodes=2", "video_episodes=0"]) == 0


def test_resume_is_exact(lift_demos, tmp_path, monkeypatch) -> None:
    """Interrupted after the step-8 checkpoint and resumed == trained without interruption."""
    import robopolicy.training.bc as bc

    full = tmp_path / "full"
    train_bc(_config(lift_demos, full, "optim.steps=16", "loop.save_every=8"))

    part = tmp_path / "part"
    save = bc.save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bc, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_bc(_config(lift_demos, part, "optim.steps=16", "loop.save_every=8"))
    monkeypatch.setattr(bc, "save_checkpoint", save)
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["0000008", "last"]
    # Starting afresh in that folder would overwrite its checkpoints: refused, pointing at resume.
    with pytest.raises(FileExistsError, match="0000008.*resume="):
        train_bc(_config(lift_demos, part, "optim.steps=16", "loop.save_every=8"))
    train_bc(_config(lift_demos, part, "optim.steps=16", "loop.save_every=8", f"resume={part}"))
    _assert_same_tensors(full / "checkpoints/0000016", part / "checkpoints/0000016")

    # Going on from the older checkpoint in place would overwrite 0000016: refused, naming
    # run_dir= for a branch; nothing in the run changes.
    older = part / "checkpoints" / "0000008"
    log = (part / "metrics.jsonl").read_text()
    with pytest.raises(
        FileExistsError, match=r"overwrite its newer checkpoints \['0000016'\].*run_dir="
    ):
        train_bc(_config(lift_demos, part, "optim.steps=16", f"resume={older}"))
    assert main(["train", CONFIG, f"resume={older}", "optim.steps=24"]) == 2
    assert (part / "metrics.jsonl").read_text() == log
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == [
        "0000008",
        "0000016",
        "last",
    ]
    # A branch is a new run from that checkpoint, which its config records as its parent.
    branch = tmp_path / "branch"
    assert main(["train", CONFIG, f"resume={older}", f"run_dir={branch}"]) == 0
    assert OmegaConf.load(branch / "config.yaml").resume == str(older.resolve())
    assert [p.name for p in saved_steps(branch)] == ["0000016"]
    _assert_same_tensors(full / "checkpoints/0000016", branch / "checkpoints/0000016")


def _assert_same_tensors(a: Path, b: Path) -> None:
    for name in ("training_state/model.safetensors", "model.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=f"{name}:{key}")


def test_resume_takes_the_runs_settings_and_refuses_to_change_them(
    lift_demos, tmp_path, monkeypatch, capsys
) -> None:
    """``resume=<run dir>`` alone, as the README shows it, goes on with every setting of the
    run (its thread count and length included), not the config file's; an override outside
    the resumable list is refused by name, unless it repeats the saved value."""
    import robopolicy.training.bc as bc

    save = bc.save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(bc, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_bc(_config(lift_demos, tmp_path, "optim.steps=12", "loop.save_every=6"))
    monkeypatch.setattr(bc, "save_checkpoint", save)

    assert main(["train", CONFIG, f"resume={tmp_path}", "optim.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr cannot change on a resume" in err and "optim.steps, loop" in err
    assert [p.name for p in saved_steps(tmp_path)] == ["0000006"]

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    # optim.num_threads repeats the saved value: allowed; loop.* may change
    resume = [f"resume={tmp_path}", "optim.num_threads=1", "loop.log_every=3"]
    assert main(["train", CONFIG, *resume]) == 0
    assert threads == [1]  # the run's, where the config file says 0 (torch's default)
    assert [p.name for p in saved_steps(tmp_path)] == ["0000006", "0000012"]  # not the file's
    saved = OmegaConf.load(tmp_path / "checkpoints" / "0000012" / "config.yaml")
    assert saved.optim.steps == 12 and saved.loop.log_every == 3 and saved.optim.num_threads == 1


def test_metrics_rows_after_the_resumed_checkpoint_are_dropped(tmp_path) -> None:
    """A process killed after its checkpoint at step 8 had logged step 12 (the last row cut
    short); the run resumed from step 8 logs 12 again, once."""
    rows = [json.dumps({"step": s, "train/loss": 1.0}) for s in (4, 8, 12)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 16, "tr')
    RunLogger(tmp_path, enabled=True, resumed_at=8).close()
    kept = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert kept == [4, 8]


def test_a_run_that_cannot_start_leaves_no_folder(lift_demos, tmp_path, capsys) -> None:
    missing, bad_batch = tmp_path / "missing", tmp_path / "bad_batch"
    assert (
        main(["train", CONFIG, f"task.dataset={tmp_path / 'nope.hdf5'}", f"run_dir={missing}"]) == 2
    )
    overrides = [f"task.dataset={lift_demos}", f"run_dir={bad_batch}", "optim.batch_size=0"]
    assert main(["train", CONFIG, *overrides]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err
    assert not missing.exists() and not bad_batch.exists()
    # a checkpoint that is not there is named as such, not as a missing config file
    assert main(["eval", str(tmp_path / "no_run")]) == 2
    assert f"no checkpoint or config at {tmp_path / 'no_run'}" in capsys.readouterr().err


def test_outputs_of_a_checkpoint_outside_a_run_need_a_folder(tiny_run, tmp_path, capsys) -> None:
    """A checkpoint copied out of its run (an export, a backup) has no run to write next to:
    resuming or evaluating it asks for run_dir= / out_dir= and writes nothing above it."""
    copy = tmp_path / "exports" / "lift"
    shutil.copytree(resolve_checkpoint(tiny_run), copy)
    assert main(["train", CONFIG, f"resume={copy}", "optim.steps=12"]) == 2
    assert "not inside a run's checkpoints/ folder: set run_dir=" in capsys.readouterr().err
    assert main(["eval", str(copy), "n_episodes=1", "video_episodes=0"]) == 2
    assert "set out_dir=" in capsys.readouterr().err
    assert main(["rti-tune", str(copy), "candidates=[1]"]) == 2
    assert "set out=" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["exports"]
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["lift"]
    branch = tmp_path / "branch"
    assert main(["train", CONFIG, f"resume={copy}", "optim.steps=12", f"run_dir={branch}"]) == 0
    assert [p.name for p in saved_steps(branch)] == ["0000012"]
    out = tmp_path / "eval"
    assert main(["eval", str(copy), "n_episodes=1", "video_episodes=0", f"out_dir={out}"]) == 0
    assert (out / "eval.json").is_file()


def test_bc_run_killed_and_resumed_equals_the_uninterrupted_run(lift_demos, tmp_path) -> None:
    result = bc_resume_exactness(tmp_path, lift_demos, steps=32)
    assert result["max_abs_diff"] == 0.0 and result["tensors"] > 100
    assert 8 <= result["killed_at"] < 32 and result["duplicate_log_rows"] == 0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(lift_demos, tmp_path, monkeypatch):
    from robopolicy.policies.diffusion import DiffusionPolicy

    original = DiffusionPolicy.compute_loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] > 10 else loss

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 11.*0000010"):
        train_bc(_config(lift_demos, tmp_path, "optim.steps=20", "loop.save_every=5"))
    assert load_policy(tmp_path / "checkpoints" / "0000010") is not None
    assert not (tmp_path / "checkpoints" / "0000015").exists()


def test_dataset_and_env_must_agree(lift_demos, tmp_path) -> None:
    with pytest.raises(ConfigError, match="recorded on robopolicy/Lift-v0"):
        train_bc(_config(lift_demos, tmp_path, "task.env_id=robopolicy/PickPlace-v0"))
    with pytest.raises(ConfigError, match="not in"):
        train_bc(_config(lift_demos, tmp_path, "task.obs_keys=[object,nope]"))


def _rewritten(lift_demos: str, path, change) -> str:
    """``lift_demos`` written anew to ``path`` after ``change`` edited its episodes in place."""
    episodes = load_episodes(lift_demos)
    change(episodes)
    return str(write_dataset(path, episodes, read_env_args(lift_demos)))


def test_a_dataset_lacking_a_named_observation_is_refused(lift_demos, tmp_path) -> None:
    def drop_object(episodes) -> None:
        for episode in episodes:
            del episode.obs["object"], episode.next_obs["object"]

    data = _rewritten(lift_demos, tmp_path / "no_object.hdf5", drop_object)
    with pytest.raises(ConfigError, match=r"task.obs_keys \['object'\] are not in .*no_object"):
        train_bc(_config(data, tmp_path / "run"))
    # The observations must be named: "whatever the dataset has" would train without `object`.
    with pytest.raises(ConfigError, match="task.obs_keys is empty"):
        train_bc(_config(lift_demos, tmp_path / "run", "task.obs_keys=[]"))


def test_actions_outside_the_env_bounds_are_refused_or_clipped(lift_demos, tmp_path) -> None:
    def outlier(episodes) -> None:
        episodes[1].actions[5, 2] = 1e30

    data = _rewritten(lift_demos, tmp_path / "outlier.hdf5", outlier)
    with pytest.raises(DatasetError, match=r"outlier.hdf5: 1 of .*demo_1/actions\[5, 2\] = 1e\+30"):
        train_bc(_config(data, tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
    clip = ["task.out_of_bounds_actions=clip", "optim.steps=2", "loop.save_every=2"]
    with pytest.warns(UserWarning, match="clipped into the bounds"):
        train_bc(_config(data, tmp_path / "clipped", *clip))
    stats = load_file(tmp_path / "clipped" / "checkpoints" / "0000002" / "normalizer.safetensors")
    action_stats = [v for k, v in stats.items() if k.startswith("actions")]
    assert action_stats and all(v.abs().max() <= 1.0 for v in action_stats)

    def nan(episodes) -> None:
        episodes[0].actions[0, 0] = float("nan")

    data = _rewritten(lift_demos, tmp_path / "nan.hdf5", nan)
    with pytest.raises(DatasetError, match="1 of them NaN or infinite.*fix the dataset$"):
        train_bc(_config(data, tmp_path / "nan", *clip))


def test_ddp_two_processes_agree(lift_demos, tmp_path) -> None:
    """torchrun with 2 CPU processes (gloo): after training the ranks' weights are identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "robopolicy",
        "train",
        str(REPO / "configs/train/lift_diffusion.yaml"),
        f"task.dataset={lift_demos}",
        f"run_dir={tmp_path}",
        *TINY_TRAIN_OVERRIDES,
        "optim.steps=6",
        "loop.save_every=6",
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    ddp = [r for r in rows if "ddp/max_weight_diff" in r]
    assert ddp and ddp[-1]["ddp/max_weight_diff"] == 0.0 and ddp[-1]["ddp/world_size"] == 2


def test_rti_tune_measures_each_k_and_writes_its_choice(tiny_run, capsys) -> None:
    args = ["candidates=[1,2]", "n_episodes=2", "num_envs=2", "latency_episodes=1"]
    assert main(["rti-tune", str(tiny_run), *args, "num_inference_steps=20"]) == 0
    result = json.loads((tiny_run / "rti-tune.json").read_text())
    assert list(result["rows"]) == ["reference", "rti_k1", "rti_k2"]
    # K' per action, plus one full chain at each episode start.
    assert 2 < result["rows"]["rti_k2"]["network_evaluations_per_action"] < 2.5
    assert result["rows"]["reference"]["network_evaluations_per_action"] == 20
    assert result["chosen_start_step"] in (1, 2, None)
    assert "chosen K'" in capsys.readouterr().out or result["chosen_start_step"] is None
    assert main(["rti-tune", str(tiny_run), "candidates=[30]"]) == 2  # beyond the chain


def test_bench_rti_writes_a_report(tiny_run, tmp_path) -> None:
    from omegaconf import OmegaConf

    from robopolicy.bench import rti

    cfg = OmegaConf.merge(
        OmegaConf.structured(rti.Config),
        {
            "tasks": [{"name": "lift", "checkpoint": str(tiny_run)}],
            "schemes": {
                "full": {"mode": "chunked", "action_horizon": 1},
                "rti_k1": {"mode": "rti", "rti_start_step": 1},
                "ensemble": {"mode": "ensemble"},
            },
            "reference": "full",
            "eval_episodes": 2,
            "num_envs": 2,
            "latency_episodes": 1,
            "out_root": str(tmp_path),
        },
    )
    results = rti.run(cfg)
    rows = results["tasks"]["lift"]["rows"]
    assert rows["full"]["network_evaluations_per_action"] == 4  # DDIM-4, every step
    assert rows["rti_k1"]["network_evaluations_per_action"] < 4
    (out,) = (tmp_path / "rti").iterdir()
    assert {"results.json", "report.md", "rti.png"} <= {p.name for p in out.iterdir()}
