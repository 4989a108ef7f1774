"""Compare execution schemes (chunked, temporal ensembling, RTI) of one checkpoint on its task:
success over seeded episodes, network evaluations per action, and latency per action.

Success is measured on a vector env (episodes in parallel, batched inference); latency on one
env at batch 1, where each ``act`` call is exactly one executed action, so chunked execution
shows its real profile (most actions pop a queue, every ``action_horizon``-th plans a chunk).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from robopolicy.checkpoint import load_policy, read_config, resolve_checkpoint
from robopolicy.inference.execution import ExecutionConfig, describe
from robopolicy.sim.agents import PolicyAgent
from robopolicy.sim.evaluate import evaluate
from robopolicy.sim.rollout import run_episodes
from robopolicy.sim.vector import make_vector_env


class _TimedAgent:
    """Forwards to an agent and records the wall time of each ``act`` call (ms)."""

    def __init__(self, agent: PolicyAgent) -> None:
        self.agent, self.name, self.times_ms = agent, agent.name, []

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        self.agent.prepare(envs)

    def reset(self, env_mask: np.ndarray) -> None:
        self.agent.reset(env_mask)

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        start = time.perf_counter()
        actions = self.agent.act(obs, envs)
        self.times_ms.append(1e3 * (time.perf_counter() - start))
        return actions

    def metrics(self) -> dict[str, float]:
        return self.agent.metrics()


def action_latency(
    checkpoint: str, execution: ExecutionConfig, env_id: str, env_kwargs: dict, episodes: int
) -> dict[str, float]:
    """Per-action latency (ms) at batch 1 over ``episodes`` episodes (seeds 200000, ...)."""
    policy = load_policy(checkpoint)
    agent = _TimedAgent(PolicyAgent(policy, execution=execution))
    envs = make_vector_env(env_id, 1, env_kwargs)
    try:
        for _ in run_episodes(envs, agent, range(200_000, 200_000 + episodes)):
            pass
    finally:
        envs.close()
    times = np.asarray(agent.times_ms[3:] or agent.times_ms)  # the first calls warm up
    return {
        "latency_ms_p50": float(np.percentile(times, 50)),
        "latency_ms_p95": float(np.percentile(times, 95)),
        "latency_ms_mean": float(times.mean()),
    }


def compare_schemes(
    checkpoint: str,
    schemes: dict[str, ExecutionConfig],
    *,
    n_episodes: int = 50,
    seed: int = 100_000,
    num_envs: int = 8,
    latency_episodes: int = 2,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """One row per scheme, evaluated on the task the checkpoint was trained on."""
    path = resolve_checkpoint(checkpoint)
    task = read_config(path)["task"]
    env_id, env_kwargs = task["env_id"], dict(task.get("env_kwargs") or {"obs_type": "state"})
    rows = {}
    for name, execution in schemes.items():
        policy = load_policy(path)  # fresh: an executor sets the policy's sampler
        label = describe(execution, policy)
        agent = PolicyAgent(policy, name=label, execution=execution)
        summary = evaluate(
            env_id,
            agent,
            n_episodes=n_episodes,
            seed=seed,
            num_envs=num_envs,
            env_kwargs=env_kwargs,
            progress=progress,
        )
        rows[name] = {
            "scheme": label,
            "success_rate": summary["success_rate"],
            "success_ci95": summary["success_ci95"],
            "n": summary["n_episodes"],
            "mean_episode_length": summary["mean_episode_length"],
            "network_evaluations_per_action": summary["network_evaluations_per_action"],
            **action_latency(str(path), execution, env_id, env_kwargs, latency_episodes),
        }
    return rows
