"""Dynamics error of synthetic transitions: put MuJoCo in the transition's state, apply its
action, and compare the simulator's next state and reward with the generated ones.

Gymnasium's locomotion tasks observe ``(qpos[1:], qvel)``: everything but the torso's x
position, which neither the dynamics nor the reward depend on (the reward uses the x
*velocity*, a difference of positions). So a state with x = 0 matches the observation
exactly, and one ``env.step`` from it is the true successor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from robopolicy.sim.vector import make_env


def supports_dynamics_error(sim) -> bool:
    """Only gymnasium's MuJoCo tasks observe (qpos[k:], qvel) and can be set from an obs."""
    from gymnasium.envs.mujoco import MujocoEnv

    return isinstance(sim, MujocoEnv)


def dynamics_error(
    env_id: str, env_kwargs: dict[str, Any], transitions: dict[str, Tensor], limit: int = 2000
) -> dict[str, float] | None:
    """Mean squared next-state error (per dimension; also in units of each dimension's variance
    over the true next states) and reward error over up to ``limit`` non-terminal transitions,
    and the share of them whose true step ends the episode. None for a task whose simulator
    state cannot be rebuilt from its observation (not a gymnasium MuJoCo task)."""
    env = make_env(env_id, **env_kwargs)
    try:
        sim = env.unwrapped
        if not supports_dynamics_error(sim):
            return None
        nq, nv = sim.model.nq, sim.model.nv
        skipped = nq + nv - transitions["obs"].shape[1]
        if skipped < 0:
            raise ValueError(
                f"dynamics error needs a gymnasium MuJoCo task observing (qpos[k:], qvel); "
                f"{env_id} has nq={nq}, nv={nv} and {transitions['obs'].shape[1]} obs dims"
            )
        env.reset(seed=0)
        keep = (~transitions["terminals"]).nonzero().flatten()[:limit]
        obs = transitions["obs"][keep].double().numpy()
        actions = transitions["actions"][keep].double().numpy()
        next_obs = transitions["next_obs"][keep].double().numpy()
        rewards = transitions["rewards"][keep].double().numpy()
        true_states, reward_err, ends = [], [], 0
        for i in range(len(keep)):
            qpos = np.concatenate([np.zeros(skipped), obs[i, : nq - skipped]])
            sim.set_state(qpos, obs[i, nq - skipped :])
            true_next, true_reward, terminated, _, _ = sim.step(actions[i])
            true_states.append(true_next)
            reward_err.append((true_reward - rewards[i]) ** 2)
            ends += bool(terminated)
    finally:
        env.close()
    if not true_states:
        raise ValueError("dynamics error: no non-terminal transition to check")
    truth = np.stack(true_states)
    squared = (truth - next_obs) ** 2
    return {
        "next_state_mse": float(squared.mean()),
        "next_state_nmse": float((squared.mean(axis=0) / truth.var(axis=0).clip(1e-6)).mean()),
        "reward_mse": float(np.mean(reward_err)),
        "true_terminal_rate": ends / len(truth),
        "transitions": len(truth),
    }
