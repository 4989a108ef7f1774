"""Results that hold to the end of an RL run: the averaged (EMA) actor, learning-rate decay,
and the best eval's checkpoint kept beside the last, loadable by eval and serve."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robopolicy.checkpoint import CheckpointError, read_meta, resolve_checkpoint
from robopolicy.cli import main
from robopolicy.config import load_config
from robopolicy.deploy.server import PolicyServer, ServeConfig
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.rl.learner import Learner
from robopolicy.rl.replay import Batch
from robopolicy.rl.run_record import best_eval
from robopolicy.rl.schedule import lr_factor


def _batch(n: int = 16, obs_dim: int = 3, action_dim: int = 2) -> Batch:
    return Batch(
        torch.randn(n, obs_dim),
        torch.rand(n, action_dim) * 2 - 1,
        torch.randn(n),
        torch.randn(n, obs_dim),
        torch.full((n,), 0.99),
    )


def test_ema_actor_moves_by_its_polyak_rate_after_each_actor_step() -> None:
    torch.manual_seed(0)
    learner = Learner(AgentConfig(algo="sac", hidden_dim=8, actor_ema=0.25), 3, 2)
    before = {k: v.clone() for k, v in learner.actor_ema.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in learner.actor.state_dict().items())
    learner.update(_batch(), update_actor=False)  # critic only: the average stays
    assert all(torch.equal(before[k], v) for k, v in learner.actor_ema.state_dict().items())
    learner.update(_batch())
    actor = learner.actor.state_dict()
    for key, value in learner.actor_ema.state_dict().items():
        assert torch.allclose(value, 0.75 * before[key] + 0.25 * actor[key])
    assert learner.policy_actor() is learner.actor_ema
    assert Learner(AgentConfig(algo="sac", hidden_dim=8), 3, 2).actor_ema is None


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("none", [1.0, 1.0, 1.0]),
        ("linear", [1.0, 0.55, 0.1]),
        ("cosine", [1.0, 0.55, 0.1]),
    ],
)
def test_lr_factor_goes_from_one_to_the_floor(kind, values) -> None:
    assert [lr_factor(kind, s, 1000, 0.1) for s in (0, 500, 1000)] == pytest.approx(values)
    assert lr_factor(kind, 2000, 1000, 0.1) == pytest.approx(values[-1])  # past the budget


def test_cosine_decay_is_slow_at_the_ends() -> None:
    quarter = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_factor("cosine", 250, 1000, 0.1) == pytest.approx(quarter)
    assert lr_factor("cosine", 250, 1000, 0.1) > lr_factor("linear", 250, 1000, 0.1)


def test_learning_rates_scale_from_the_configured_ones() -> None:
    learner = Learner(AgentConfig(algo="sac", hidden_dim=8, actor_lr=1e-3, critic_lr=2e-3), 3, 2)
    learner.scale_learning_rates(0.5)
    learner.scale_learning_rates(0.5)  # from the configured rates, not compounded
    assert learner.actor_optim.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert learner.critic_optim.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert learner.alpha_optim.param_groups[0]["lr"] == pytest.approx(3e-4)  # untouched


@pytest.mark.parametrize(
    ("key", "value"),
    [("actor_ema", 1.0), ("actor_ema", -0.1), ("lr_decay", "step"), ("lr_floor", 1.5)],
)
def test_bad_ema_and_decay_settings_are_refused(key, value) -> None:
    with pytest.raises(ValueError, match=f"agent.{key}"):
        Learner(AgentConfig(**{key: value}), 3, 2)


def test_best_eval_is_the_earliest_of_the_highest() -> None:
    rows = [
        {"env_steps": 0, "success_rate": 0.2, "mean_return": 1.0},
        {"env_steps": 10, "success_rate": 0.6, "mean_return": 1.0},
        {"env_steps": 20, "success_rate": 0.6, "mean_return": 1.0},
        {"env_steps": 30, "success_rate": 0.4, "mean_return": 9.0},
    ]
    assert best_eval(rows)["env_steps"] == 10
    assert best_eval([]) is None


def test_run_keeps_its_best_eval_as_checkpoints_best(tiny_run, tmp_path, capsys) -> None:
    run_dir = tmp_path / "rl"
    cfg = load_config(
        None,
        FinetuneConfig,
        [
            f"base={tiny_run}",
            f"run_dir={run_dir}",
            "env_steps=40",
            "warmup_steps=10",
            "critic_warmup_updates=5",
            "eval_every=10",
            "eval_episodes=2",
            "final_eval_episodes=2",
            "video_episodes=0",
            "save_every=20",
            "num_threads=1",
            "agent.hidden_dim=16",
            "agent.critic_heads=3",
            "agent.batch_size=8",
            "agent.actor_ema=0.1",
            "agent.lr_decay=cosine",
        ],
    )
    result = finetune(cfg)
    best = best_eval(result["history"])
    assert result["best"] == best
    checkpoints = run_dir / "checkpoints"
    assert read_meta(checkpoints / "best")["step"] == best["env_steps"]
    assert read_meta(checkpoints / "best")["metrics"]["success_rate"] == best["success_rate"]
    assert not (checkpoints / "best" / "training_state").exists()  # the policy alone
    assert (checkpoints / "last").resolve().name == "0000040"  # last stays the final
    assert resolve_checkpoint(run_dir).name == "0000040"  # and resumes go on from it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["env_steps"] == 40 and summary["best"] == best
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "best/success_rate" in r]
    assert len(logged) == len(result["history"])
    assert logged[-1]["best/env_steps"] == best["env_steps"]

    # the ways to name it: pick=best, <run>/best, the folder itself, a step's run
    target = (checkpoints / "best").resolve()
    assert resolve_checkpoint(run_dir, "best") == target
    assert resolve_checkpoint(run_dir / "best") == target
    assert resolve_checkpoint(checkpoints / "best") == target
    assert resolve_checkpoint(checkpoints / "0000020", "best") == target
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        resolve_checkpoint(tiny_run, "best")  # a BC run keeps none
    with pytest.raises(CheckpointError, match="pick 'first' not in"):
        resolve_checkpoint(run_dir, "first")
    out = tmp_path / "eval-best"
    args = ["eval", str(run_dir), "pick=best", "n_episodes=2", "video_episodes=0"]
    assert main([*args, f"out_dir={out}"]) == 0
    assert json.loads((out / "eval.json").read_text())["settings"]["checkpoint"] == str(target)
    assert main(["eval", str(run_dir / "best"), "n_episodes=2", "video_episodes=0"]) == 0
    assert (run_dir / f"eval-{best['env_steps']:07d}-residual-td3" / "eval.json").is_file()
    capsys.readouterr()
    server = PolicyServer(ServeConfig(checkpoint=str(run_dir), pick="best", num_threads=1))
    assert server.metadata["rl"]["step"] == best["env_steps"]
