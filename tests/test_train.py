"""BC training end to end on a tiny Lift dataset: outputs, exact resume, NaN stop, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from bc_fixtures import REPO, TINY_TRAIN_OVERRIDES
from bc_fixtures import tiny_train_config as _config
from safetensors.torch import load_file

from robopolicy.checkpoint import load_policy
from robopolicy.cli import main
from robopolicy.config import ConfigError
from robopolicy.data.hdf5 import DatasetError, load_episodes, read_env_args, write_dataset
from robopolicy.training.bc import TrainingDivergedError, train_bc


def test_training_writes_checkpoints_logs_and_eval(lift_demos, tmp_path) -> None:
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
    # The CLI evaluates a run directory (its last checkpoint) on the task it was trained on.
    assert main(["eval", str(tmp_path), "n_episodes=2", "video_episodes=0"]) == 0
    saved = json.loads((tmp_path / "eval-0000020" / "eval.json").read_text())
    assert saved["env_id"] == "robopolicy/Lift-v0"
    assert saved["agent"] == "diffusion-unet ddim-4 chunked(4)"
    # ... and runs it with RTI: the trained DDPM chain, re-planned every step from K' = 2.
    rti = ["execution.mode=rti", "execution.sampler=ddpm", "execution.num_inference_steps=20"]
    rti_dir = tmp_path / "eval-rti"
    overrides = [*rti, "execution.rti_start_step=2", f"out_dir={rti_dir}"]
    assert main(["eval", str(tmp_path), "n_episodes=2", "video_episodes=0", *overrides]) == 0
    saved = json.loads((rti_dir / "eval.json").read_text())
    assert saved["agent"] == "diffusion-unet ddpm-20 rti(K'=2)"


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
    for name in ("training_state/model.safetensors", "model.safetensors"):
        a = load_file(full / "checkpoints/0000016" / name)
        b = load_file(part / "checkpoints/0000016" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")


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
