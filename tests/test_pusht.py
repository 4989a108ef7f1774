"""PushT specifics: the pusher tracks its target, the expert succeeds and is multimodal."""

from __future__ import annotations

import numpy as np

from robopolicy.sim.vector import make_env


def test_pusher_goes_to_the_commanded_position() -> None:
    env = make_env("robopolicy/PushT-v0").unwrapped
    env.reset(seed=0)
    target = np.array([0.8, -0.8], dtype=np.float32)  # away from the block's range
    for _ in range(10):
        env.step(target)
    np.testing.assert_allclose(env.pusher_pos(), target * env.WORKSPACE, atol=5e-3)


def test_expert_succeeds() -> None:
    env = make_env("robopolicy/PushT-v0")
    env.unwrapped.attach_expert(0.0)
    for seed in (0, 1):
        env.reset(seed=seed)
        for _ in range(env.spec.max_episode_steps):
            *_, terminated, truncated, info = env.step(env.unwrapped.expert_action())
            if terminated or truncated:
                break
        assert info["is_success"], seed


def test_expert_pushes_from_both_sides() -> None:
    """Equally good pushes from either side are chosen at random: the demos are multimodal."""
    env = make_env("robopolicy/PushT-v0")
    env.unwrapped.attach_expert(0.0)
    sides = set()
    for seed in range(12):
        env.reset(seed=seed)
        env.unwrapped.expert_action()  # plans the first push
        sides.add(env.unwrapped._expert.first_push_side)
    assert {-1.0, 1.0} <= sides  # left and right halves of the T (0: on its axis)


def test_same_seed_same_expert_trajectory() -> None:
    env = make_env("robopolicy/PushT-v0")
    env.unwrapped.attach_expert(0.0)
    runs = []
    for _ in range(2):
        env.reset(seed=3)
        runs.append([env.unwrapped.expert_action() for _ in range(15)])
    np.testing.assert_array_equal(np.array(runs[0]), np.array(runs[1]))
