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
import torch
from torch import Tensor

from robopolicy.sim.vector import make_env


def supports_dynamics_error(sim) -> bool:
    """Only gymnasium's MuJoCo tasks observe (qpos[k:], qvel) and can be set from an obs."""
    from gymnasium.envs.mujoco import MujocoEnv

    return isinstance(sim, MujocoEnv)


def simulate(
    env_id: str, env_kwargs: dict[str, Any], obs: np.ndarray, actions: np.ndarray
) -> dict[str, np.ndarray] | None:
    """The simulator's answer to each (observation, action): next observation, reward and
    termination, one ``env.step`` from the state the observation pins down. None for a task
    whose simulator state cannot be rebuilt from its observation (not a gymnasium MuJoCo task)."""
    env = make_env(env_id, **env_kwargs)
    try:
        sim = env.unwrapped
        if not supports_dynamics_error(sim):
            return None
        nq, nv = sim.model.nq, sim.model.nv
        skipped = nq + nv - obs.shape[1]
        if skipped < 0:
            raise ValueError(
                f"dynamics error needs a gymnasium MuJoCo task observing (qpos[k:], qvel); "
                f"{env_id} has nq={nq}, nv={nv} and {obs.shape[1]} obs dims"
            )
        env.reset(seed=0)
        next_obs, rewards, terminated = [], [], []
        for state, action in zip(obs.astype(np.float64), actions.astype(np.float64), strict=True):
            sim.set_state(
                np.concatenate([np.zeros(skipped), state[: nq - skipped]]), state[nq - skipped :]
            )
            true_next, reward, ended, _, _ = sim.step(action)
            next_obs.append(true_next)
            rewards.append(reward)
            terminated.append(ended)
    finally:
        env.close()
    return {
        "next_obs": np.stack(next_obs) if next_obs else np.zeros((0, obs.shape[1])),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "terminals": np.asarray(terminated, dtype=bool),
    }


def relabel_with_simulator(
    env_id: str, env_kwargs: dict[str, Any], transitions: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Synthetic (s, a) with the simulator's next state, reward and termination: the
    oracle-dynamics control that separates the model's dynamics error from what guidance does
    to the state-action distribution."""
    truth = simulate(env_id, env_kwargs, transitions["obs"].numpy(), transitions["actions"].numpy())
    if truth is None:
        raise ValueError(f"{env_id}: its simulator state cannot be rebuilt from observations")
    like = transitions["obs"]
    return {
        "obs": transitions["obs"],
        "actions": transitions["actions"],
        "rewards": torch.as_tensor(truth["rewards"]).to(transitions["rewards"]),
        "next_obs": torch.as_tensor(truth["next_obs"]).to(like),
        "terminals": torch.as_tensor(truth["terminals"]),
    }


def dynamics_error(
    env_id: str, env_kwargs: dict[str, Any], transitions: dict[str, Tensor], limit: int = 2000
) -> dict[str, float] | None:
    """Mean squared next-state error (per dimension; also in units of each dimension's variance
    over the true next states) and reward error over up to ``limit`` non-terminal transitions,
    and the share of them whose true step ends the episode. None for a task whose simulator
    state cannot be rebuilt from its observation (not a gymnasium MuJoCo task)."""
    keep = (~transitions["terminals"]).nonzero().flatten()[:limit]
    if len(keep) == 0:
        raise ValueError("dynamics error: no non-terminal transition to check")
    truth = simulate(
        env_id,
        env_kwargs,
        transitions["obs"][keep].double().numpy(),
        transitions["actions"][keep].double().numpy(),
    )
    if truth is None:
        return None
    next_obs = transitions["next_obs"][keep].double().numpy()
    rewards = transitions["rewards"][keep].double().numpy()
    squared = (truth["next_obs"] - next_obs) ** 2
    return {
        "next_state_mse": float(squared.mean()),
        "next_state_nmse": float(
            (squared.mean(axis=0) / truth["next_obs"].var(axis=0).clip(1e-6)).mean()
        ),
        "reward_mse": float(np.mean((truth["rewards"] - rewards) ** 2)),
        "true_terminal_rate": float(truth["terminals"].mean()),
        "transitions": len(keep),
    }
