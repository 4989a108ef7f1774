"""The task suite: gymnasium API conformance, seeding, experts, errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robopolicy.sim.vector import make_env


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_check_env(env_id: str, obs_type: str) -> None:
    env = make_env(env_id, obs_type=obs_type, image_size=32)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_obs_types_have_the_right_keys(env_id: str) -> None:
    both = make_env(env_id, obs_type="both", image_size=32)
    obs, _ = both.reset(seed=0)
    images = {k for k in obs if k.endswith("_image")}
    assert images == {f"{cam}_image" for cam in both.unwrapped.cameras}
    for key in images:
        assert obs[key].shape == (32, 32, 3) and obs[key].dtype == np.uint8
    state = make_env(env_id, obs_type="state")
    state_obs, _ = state.reset(seed=0)
    assert set(state_obs) == set(obs) - images
    for key in state_obs:
        np.testing.assert_allclose(state_obs[key], obs[key])


def test_same_seed_same_initial_state(env_id: str) -> None:
    env = make_env(env_id)
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.allclose(a[k], c[k]) for k in a)


def test_state_round_trip(env_id: str) -> None:
    env = make_env(env_id).unwrapped
    env.reset(seed=1)
    for _ in range(5):
        env.step(env.action_space.sample())
    state, obs = env.get_state(), env.low_dim_obs()
    env.reset(seed=2)
    env.set_state(state)
    for key, value in env.low_dim_obs().items():
        np.testing.assert_allclose(value, obs[key])
    with pytest.raises(ValueError, match="state shape"):
        env.set_state(state[:-1])


@pytest.mark.parametrize("env_id", ["robopolicy/Lift-v0", "robopolicy/PickPlace-v0"])
def test_gripper_expert_succeeds(env_id: str) -> None:
    env = make_env(env_id)
    env.unwrapped.attach_expert(0.0)
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(env.spec.max_episode_steps):
            _, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            if terminated or truncated:
                break
        assert info["is_success"] and terminated and reward == 1.0, (env_id, seed)


def test_lift_gripper_follows_delta_actions() -> None:
    env = make_env("robopolicy/Lift-v0").unwrapped
    env.reset(seed=0)
    start = env.eef_pos()
    for _ in range(5):
        env.step(np.array([1.0, 0.0, 0.0, -1.0], dtype=np.float32))
    moved = env.eef_pos() - start
    assert 0.03 < moved[0] <= 5 * env.MAX_DELTA + 1e-3
    assert abs(moved[1]) < 5e-3 and abs(moved[2]) < 5e-3


def test_dense_reward_rises_as_the_expert_works(env_id: str) -> None:
    env = make_env(env_id, reward_type="dense")
    env.unwrapped.attach_expert(0.0)
    env.reset(seed=0)
    rewards = []
    for _ in range(env.spec.max_episode_steps):
        _, reward, terminated, truncated, _ = env.step(env.unwrapped.expert_action())
        rewards.append(reward)
        if terminated or truncated:
            break
    assert all(np.isfinite(rewards)) and len(set(rewards)) > 3
    assert rewards[-1] > rewards[0]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="obs_type 'rgb'"):
        make_env("robopolicy/Lift-v0", obs_type="rgb")
    with pytest.raises(ValueError, match="reward_type"):
        make_env("robopolicy/Lift-v0", reward_type="shaped")
    with pytest.raises(ValueError, match="robopolicy/Lift-v0"):
        make_env("robopolicy/Lfit-v0")
    env = make_env("robopolicy/Lift-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="attach_expert"):
        env.unwrapped.expert_action()


def test_registered_with_time_limits() -> None:
    import robopolicy  # noqa: F401

    assert gym.spec("robopolicy/Lift-v0").max_episode_steps == 100
    assert gym.spec("robopolicy/PickPlace-v0").max_episode_steps == 200
