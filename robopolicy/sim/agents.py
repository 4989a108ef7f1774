"""What the rollout loop drives: anything that maps a batch of observations to actions.

The scripted experts read privileged simulator state, so they run inside each sub-env (see
``MujocoTaskEnv.attach_expert``) and are reached through ``VectorEnv.call``; policies will act
on the observation batch alone.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np

from robopolicy.inference.guard import ObsGuard, ObsGuardConfig, check_actions
from robopolicy.inference.history import obs_tensor


class Agent(Protocol):
    name: str

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        """Called once before the first reset."""

    def reset(self, env_mask: np.ndarray) -> None:
        """New episodes start in the sub-envs where ``env_mask`` is True."""

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        """Actions (num_envs, action_dim) for the current observation batch."""

    def metrics(self) -> dict[str, float]:
        """Agent-specific figures for the eval summary (e.g. network evaluations per action)."""


class ExpertAgent:
    """The task's scripted expert, with its noise knob."""

    def __init__(self, noise: float = 0.0) -> None:
        self.noise = float(noise)
        self.name = f"expert(noise={self.noise:g})"

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        envs.call("attach_expert", self.noise)

    def reset(self, env_mask: np.ndarray) -> None:
        """The expert restarts inside each env's own reset."""

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        return np.stack(envs.call("expert_action")).astype(np.float32)

    def metrics(self) -> dict[str, float]:
        return {}


class PolicyAgent:
    """A BC policy (any ``BasePolicy``) acting on a vector env's observation batch.

    Each sub-env keeps its own observation history and plan (see ``robopolicy.inference``), so
    its episodes start and end independently of the others. ``execution`` picks chunked
    execution, temporal ensembling or RTI.
    """

    def __init__(self, policy, name: str = "policy", execution=None) -> None:
        from robopolicy.inference.execution import ExecutionConfig

        self.policy = policy.eval()
        self.name = name
        self.execution = execution if execution is not None else ExecutionConfig()
        self.executor = None

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        from robopolicy.inference.execution import make_executor

        discrete_dims = envs.get_attr("discrete_action_dims")[0]
        self.executor = make_executor(self.policy, envs.num_envs, self.execution, discrete_dims)

    def reset(self, env_mask: np.ndarray) -> None:
        self.executor.reset(env_mask)

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        device = self.policy.device
        batch = {
            key: obs_tensor(value).to(device)
            for key, value in obs.items()
            if key in self.policy.shapes.obs
        }
        return self.executor.act(batch).cpu().numpy().astype(np.float32)

    def metrics(self) -> dict[str, float]:
        return {"network_evaluations_per_action": self.executor.evaluations_per_action}


class GuardedAgent:
    """Any agent behind the observation and action guard (``robopolicy.inference.guard``), as
    in-process eval runs it: observations are checked as the policy will see them (cast, and
    against its normaliser when it has one), and a non-finite action is never stepped.

    With the default ``action="warn"`` a simulator may wander far from the demonstrations (a
    dropped cube) and such episodes still count, as they must for an honest success rate.
    """

    def __init__(self, agent: Agent, cfg: ObsGuardConfig) -> None:
        self.agent = agent
        self.name = agent.name
        normalizer = getattr(getattr(agent, "policy", None), "normalizer", None)
        self.guard = ObsGuard(normalizer, cfg)

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        self.agent.prepare(envs)

    def reset(self, env_mask: np.ndarray) -> None:
        self.agent.reset(env_mask)

    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        arrays = obs if isinstance(obs, dict) else {"obs": obs}
        checked = self.guard.keys or set(arrays)  # with a normaliser: what the policy reads
        self.guard.check_obs(
            {k: obs_tensor(np.asarray(v)) for k, v in arrays.items() if k in checked}
        )
        actions = self.agent.act(obs, envs)
        check_actions(np.asarray(actions))
        return actions

    def metrics(self) -> dict[str, float]:
        return {**self.agent.metrics(), "obs_out_of_range": self.guard.out_of_range}
