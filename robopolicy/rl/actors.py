"""Trained RL actors as rollout agents (the ``Agent`` protocol of ``robopolicy.sim``), so that
training-time eval, ``robopolicy eval`` and the benchmarks all use the one eval harness.

- ``ResidualAgent``: the frozen base plus the residual actor, clip(a_base + r, -1, 1);
- ``FlatObsAgent``: an actor over the flattened observation (SAC from scratch).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from robopolicy.rl.flat_obs import flatten_obs
from robopolicy.rl.networks import GaussianActor
from robopolicy.rl.residual import ResidualBase


def greedy_action(actor: torch.nn.Module, x: Tensor) -> Tensor:
    """What a trained actor does at eval time: SAC's mean action (its forward also returns a
    log-probability), a deterministic actor's output as it is."""
    if isinstance(actor, GaussianActor):
        return actor(x, deterministic=True)[0]
    return actor(x)


class ResidualAgent:
    def __init__(
        self,
        policy,
        actor: torch.nn.Module,
        name: str = "residual",
        gripper_gain: float = 0.0,
        action_scale: float = 1.0,
        gripper_critic: torch.nn.Module | None = None,
    ) -> None:
        self.policy = policy
        self.actor = actor.eval()
        self.name = name
        self.gripper = (gripper_gain, action_scale, gripper_critic)  # see ResidualBase
        self.base: ResidualBase | None = None

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        self.setup(envs.num_envs, envs.get_attr("discrete_action_dims")[0])

    def setup(self, num_envs: int, discrete_dims) -> None:
        self.base = ResidualBase(self.policy, num_envs, discrete_dims, *self.gripper)

    def session(self) -> ResidualAgent:
        """A new agent with its own episode state, sharing the (frozen) networks."""
        return ResidualAgent(self.policy, self.actor, self.name, *self.gripper)

    def reset(self, env_mask: np.ndarray) -> None:
        self.base.reset(env_mask)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], envs: gym.vector.VectorEnv) -> np.ndarray:
        actor_obs = self.base.step(obs)
        executed = self.base.executed_action(actor_obs, greedy_action(self.actor, actor_obs))
        return self.base.env_action(executed).cpu().numpy()

    def metrics(self) -> dict[str, float]:
        return {}


class FlatObsAgent:
    def __init__(
        self, actor: torch.nn.Module, obs_keys: list[str] | None, name: str = "sac"
    ) -> None:
        self.actor = actor.eval()
        self.obs_keys = obs_keys
        self.name = name

    def prepare(self, envs: gym.vector.VectorEnv) -> None:
        """Nothing to prepare: the actor is stateless."""

    def reset(self, env_mask: np.ndarray) -> None:
        """Nothing to reset: the actor is stateless."""

    @torch.no_grad()
    def act(self, obs, envs: gym.vector.VectorEnv) -> np.ndarray:
        x = flatten_obs(obs, self.obs_keys).to(next(self.actor.parameters()).device)
        return greedy_action(self.actor, x).cpu().numpy()

    def metrics(self) -> dict[str, float]:
        return {}


def load_rl_agent(path, config: dict, device: str | torch.device = "cpu"):
    """An RL checkpoint (``robopolicy finetune``) -> a rollout agent with its networks on
    ``device``; the residual's base is loaded from the checkpoint it names, and must still fit
    the actor."""
    from robopolicy.checkpoint import CheckpointError, load_policy, load_state, load_strict
    from robopolicy.rl.agent_config import AgentConfig
    from robopolicy.rl.networks import CriticEnsemble, DeterministicActor

    rl = config["rl"]
    if rl["method"] == "expo":  # one policy: its own trained base, edit policy and critic
        from robopolicy.rl.expo import load_expo_agent

        return load_expo_agent(path, config, device)
    agent_cfg = AgentConfig(**config["finetune"]["agent"])
    if agent_cfg.algo == "sac":
        actor = GaussianActor(
            rl["obs_dim"],
            rl["action_dim"],
            agent_cfg.hidden_dim,
            agent_cfg.num_layers,
            agent_cfg.action_scale,
            activation=agent_cfg.activation,
        )
    else:
        actor = DeterministicActor(
            rl["obs_dim"],
            rl["action_dim"],
            agent_cfg.hidden_dim,
            agent_cfg.num_layers,
            agent_cfg.action_scale,
            activation=agent_cfg.activation,
        )
    weights = load_state(path, "model")

    def load_module(module: torch.nn.Module, prefix: str) -> None:
        """Fill ``module`` from the weights saved under ``prefix`` (actor., critic.)."""
        part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        load_strict(module, part, f"{path}/model.safetensors")

    load_module(actor, "actor.")
    actor.to(device)
    if rl["method"] == "scratch":
        return FlatObsAgent(actor, rl["obs_keys"], name=agent_cfg.algo)
    policy = load_policy(rl["base"], device=device)
    if rl["method"].startswith("dsrl"):
        from robopolicy.rl.dsrl import NoiseAgent, noise_dim

        span = config["finetune"].get("dsrl_noise", "chunk")
        expected = (policy.obs_encoder.out_dim, noise_dim(policy, span))
        if (rl["obs_dim"], rl["action_dim"]) != expected:
            raise CheckpointError(
                f"{path}: the noise actor maps {rl['obs_dim']} features to {rl['action_dim']} "
                f"noise dims but its base {rl['base']} has {expected[0]} and {expected[1]} "
                f"(dsrl_noise: {span})"
            )
        sample = config["finetune"].get("dsrl_sample_noise", False)  # older: the mean
        return NoiseAgent(policy, actor, rl["method"], sample, noise_span=span)
    expected = policy.obs_encoder.out_dim + policy.action_dim
    if expected != rl["obs_dim"]:
        raise CheckpointError(
            f"{path}: the residual actor takes {rl['obs_dim']} inputs but its base {rl['base']} "
            f"gives {expected}"
        )
    gain = config["finetune"].get("residual_gripper_gain", 0.0)
    critic = None
    if rl.get("gripper_by_critic"):  # the critic chose open/close when this was saved
        critic = CriticEnsemble(
            rl["obs_dim"],
            rl["action_dim"],
            agent_cfg.critic_heads,
            agent_cfg.hidden_dim,
            agent_cfg.num_layers,
            agent_cfg.activation,
        )
        load_module(critic, "critic.")
        critic.to(device)
    name = f"residual({agent_cfg.algo})"
    return ResidualAgent(policy, actor, name, gain, agent_cfg.action_scale, critic)
