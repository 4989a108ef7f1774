"""The eval harness: statistics, seeding, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robopolicy.sim.agents import ExpertAgent
from robopolicy.sim.evaluate import evaluate, summary_line
from robopolicy.sim.stats import wilson_interval


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-4)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_eval_writes_summary_and_video(tmp_path) -> None:
    summary = evaluate(
        "robopolicy/Lift-v0",
        ExpertAgent(0.0),
        n_episodes=3,
        seed=5,
        num_envs=2,
        out_dir=tmp_path,
        video_episodes=1,
        progress=False,
    )
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["seeds"] == [5, 6, 7] and saved["n_episodes"] == 3
    assert saved["success_rate"] == 1.0 and saved["success_signal"] is True
    assert saved["success_ci95"][0] < 1.0 == saved["success_ci95"][1]
    assert saved["time_per_action_ms"] > 0 and saved["mean_episode_length"] > 5
    assert (tmp_path / "rollouts.mp4").stat().st_size > 1000
    assert "success 100%" in summary_line(summary)


def test_eval_is_reproducible_whatever_the_number_of_envs() -> None:
    kwargs = dict(n_episodes=4, seed=11, progress=False)
    one = evaluate("robopolicy/Lift-v0", ExpertAgent(0.5), num_envs=1, **kwargs)
    two = evaluate("robopolicy/Lift-v0", ExpertAgent(0.5), num_envs=2, **kwargs)
    assert one["per_episode"] == two["per_episode"]


class ZeroAgent:
    """Always the zero action: enough to run a task through the harness."""

    name = "zero"

    def prepare(self, envs) -> None:
        self.action_shape = envs.single_action_space.shape

    def reset(self, env_mask) -> None:
        pass

    def act(self, obs, envs):
        return np.zeros((envs.num_envs, *self.action_shape), dtype=np.float32)

    def metrics(self) -> dict[str, float]:
        return {}


def test_tasks_without_a_success_signal_are_summarised_by_return() -> None:
    summary = evaluate("Pendulum-v1", ZeroAgent(), n_episodes=1, num_envs=1, progress=False)
    assert summary["success_signal"] is False and summary["mean_episode_length"] == 200
    line = summary_line(summary)
    assert "success" not in line and "mean return" in line


class TorchRandomAgent(ZeroAgent):
    """Actions drawn from torch's global RNG, like a diffusion policy's noise."""

    name = "torch-random"

    def act(self, obs, envs):
        return torch.rand(envs.num_envs, *self.action_shape).numpy() * 4 - 2


def test_eval_seeds_the_agents_sampling_and_restores_the_callers_rng() -> None:
    kwargs = dict(n_episodes=2, num_envs=1, progress=False)
    torch.manual_seed(123)
    first = evaluate("Pendulum-v1", TorchRandomAgent(), **kwargs)
    after_eval = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after_eval, torch.rand(3))  # the caller's stream did not move
    again = evaluate("Pendulum-v1", TorchRandomAgent(), **kwargs)
    assert again["per_episode"] == first["per_episode"]
    other = evaluate("Pendulum-v1", TorchRandomAgent(), sampler_seed=7, **kwargs)
    assert other["per_episode"] != first["per_episode"]
