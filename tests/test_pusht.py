"""PushT: the env's conventions, and a scripted expert that succeeds, is deterministic, leaves the
real state alone while planning, and is multimodal."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.experts.pusht_expert import PushTExpert
from envs.pusht import PushTEnv
from robopolicy.sim.vector import make_env

ENV_ID = "robopolicy/PushT-v0"


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_check_env(obs_type: str) -> None:
    env = PushTEnv(obs_type=obs_type, image_size=32)
    check_env(env, skip_render_check=True)
    env.close()


def test_same_seed_same_initial_state() -> None:
    env = PushTEnv()
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.allclose(a["object"], c["object"])


def test_initial_state_is_valid() -> None:
    """Not solved already, and the pusher clear of the block."""
    env = PushTEnv()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert not info["is_success"]
        assert env.block_distance(env.pusher_pos()) > env.pusher_radius
        assert np.all(np.abs(env.block_pose()[:2]) <= env.BLOCK_RANGE)


def test_pusher_follows_the_action_target() -> None:
    env = PushTEnv()
    env.reset(seed=0)  # the pusher starts up-left of the block: move it 4 cm at a time, away
    start = env.pusher_pos()
    for offset in ([-0.04, 0.0], [-0.04, 0.04], [0.0, 0.04]):
        target = start + np.array(offset)
        env.step((target / env.WORKSPACE).astype(np.float32))
        np.testing.assert_allclose(env.pusher_pos(), target, atol=2e-3)


def test_success_and_dense_reward_at_the_goal() -> None:
    env = PushTEnv(reward_type="dense")
    env.reset(seed=0)
    assert -1.0 <= env._dense_reward() < 0.0
    env.data.qpos[env.block_qpos_adr] = env.GOAL + np.array([0.01, 0.0, 2 * np.pi])
    assert env.pose_error() == pytest.approx((0.01, 0.0), abs=1e-9)
    assert env._is_success() and env._dense_reward() == 1.0


def _run_expert(env, seed: int) -> dict:
    env.reset(seed=seed)
    for _ in range(env.spec.max_episode_steps):
        _, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
        if terminated or truncated:
            break
    return {"success": info["is_success"] and terminated, "reward": reward}


def test_expert_succeeds() -> None:
    env = make_env(ENV_ID)
    env.unwrapped.attach_expert(0.0)
    for seed in range(3):
        result = _run_expert(env, seed)
        assert result["success"] and result["reward"] == 1.0, seed


def test_expert_is_deterministic_and_plans_on_a_copy() -> None:
    env = PushTEnv()
    runs = []
    for _ in range(2):
        env.reset(seed=5)
        expert = PushTExpert(seed=11)
        expert.reset(env)
        state = env.get_state()
        actions = [expert.act(env)]  # plans the first push: the env's state must not change
        np.testing.assert_array_equal(env.get_state(), state)
        for _ in range(15):
            env.step(actions[-1])
            actions.append(expert.act(env))
        runs.append(np.array(actions))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_expert_is_multimodal() -> None:
    """From one initial state, expert seeds differ in which side of the T they push first."""
    env = PushTEnv()
    sides = []
    for env_seed in range(3):
        seen = set()
        for expert_seed in range(4):
            env.reset(seed=env_seed)
            expert = PushTExpert(seed=expert_seed)
            expert.reset(env)
            expert.act(env)
            seen.add(float(np.sign(expert.pushes[0].contact[0])))
        sides.append(seen)
    assert {-1.0, 1.0} in sides, sides


def test_expert_noise_adds_action_noise() -> None:
    env = PushTEnv()
    env.reset(seed=0)
    clean, noisy = PushTExpert(0.0, seed=0), PushTExpert(0.2, seed=0)
    clean.reset(env)
    noisy.reset(env)
    assert not np.allclose(clean.act(env), noisy.act(env))
    with pytest.raises(ValueError, match="noise"):
        PushTExpert(-0.1)


def test_agentview_renders() -> None:
    env = make_env(ENV_ID, obs_type="pixels", image_size=84)
    obs, _ = env.reset(seed=0)
    image = obs["agentview_image"]
    assert image.shape == (84, 84, 3) and image.dtype == np.uint8
    assert image.std() > 10, f"agentview looks blank (std {image.std():.1f})"
    env.close()
