"""bench sim: the physics limit follows the env's own trajectory, and the run shows progress."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.bench import sim
from robopolicy.sim.vector import make_env


def test_physics_limit_replays_the_envs_trajectory() -> None:
    figures = sim._throughput("robopolicy/Lift-v0", 60)
    # The raw-model replay ends exactly where the env did: the limit is timed on the same motion.
    assert figures["replay_state_error"] == 0.0
    assert figures["physics_limit_env_steps_per_s"] > 0
    assert figures["share_of_physics_limit"] > 0


def test_replay_restarts_from_each_reset_state() -> None:
    env = make_env("robopolicy/Lift-v0", obs_type="state").unwrapped
    env._is_success = lambda: env.data.time > 0.4  # an episode ends every ~8 steps
    actions = np.random.default_rng(1).uniform(-1, 1, (40, 4)).astype(np.float32)
    controls, resets, env_final = sim._record_controls(env, actions)
    assert len(resets) >= 4
    _, replay_final = sim._time_physics(env, controls, resets)
    np.testing.assert_array_equal(replay_final, env_final)
    env.close()


def test_run_shows_a_progress_bar_over_every_stage(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = sim.Config(
        tasks=[
            sim.TaskBench(
                "robopolicy/Lift-v0",
                mixed_noise=0.6,
                expert_episodes=1,
                collect_demos_state=1,
                collect_demos_pixels=1,
            )
        ],
        num_envs=1,
        throughput_steps=20,
        render_frames=2,
        image_size=32,
        out_root=str(tmp_path),
    )
    results = sim.run(cfg)
    assert results["tasks"]["robopolicy/Lift-v0"]["throughput"]["replay_state_error"] == 0.0
    err = capsys.readouterr().err
    assert "bench sim" in err and "4/4" in err
