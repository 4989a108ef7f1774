"""DSRL: the noise-action MDP, determinism, the noise bound, and noise-aliasing distillation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from bc_fixtures import tiny_policy

from robopolicy.checkpoint import CheckpointError, load_policy, read_config
from robopolicy.cli import main
from robopolicy.config import load_config
from robopolicy.deploy.client import PolicyClient, ServerError
from robopolicy.deploy.server import PolicyServer, ServeConfig
from robopolicy.rl.actors import load_rl_agent
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.dsrl import NoiseAliasingLearner, NoiseBase, NoiseMDP, noise_dim
from robopolicy.rl.finetune import finetune
from robopolicy.rl.mdp import seed_stream
from robopolicy.rl.networks import ACTIVATIONS


class CountingEnv(gym.Env):
    """Reward 1 per step; the episode terminates after ``length`` steps (seeded: 5 or 6)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-9, 9, (3,))})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,))
        self.t = 0
        self.length = 5

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, 5 + (seed or 0) % 2
        return {"state": np.full(3, 0.1 * self.t, np.float32)}, {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        obs = {"state": np.full(3, 0.1 * self.t, np.float32)}
        return obs, 1.0, done, False, {"is_success": done}


def _mdp(chunk_critic: bool = False) -> NoiseMDP:
    envs = gym.vector.SyncVectorEnv(
        [CountingEnv, CountingEnv], autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    base = NoiseBase(tiny_policy("diffusion", "mlp"), num_envs=2)
    return NoiseMDP(envs, seed_stream(0), base, chunk_critic=chunk_critic)


def test_same_noise_gives_the_same_chunk() -> None:
    base = NoiseBase(tiny_policy("diffusion", "mlp", sampler="ddpm"), num_envs=1)
    assert base.policy.cfg.sampler == "ddim"  # switched: DDPM adds fresh noise
    base.push({"state": np.ones((1, 3), np.float32)}, [0])
    features = base.features([0])
    noise = torch.randn(1, base.noise_dim)
    first = base.decode(features, noise)
    assert torch.equal(first, base.decode(features, noise))
    assert not torch.equal(first, base.decode(features, torch.randn(1, base.noise_dim)))
    assert first.shape == (1, base.chunk_dim)


def test_executed_noise_span_leaves_the_other_steps_at_zero() -> None:
    policy = tiny_policy("diffusion", "mlp")
    chunk, executed = NoiseBase(policy, 1), NoiseBase(policy, 1, noise_span="executed")
    assert executed.noise_dim == policy.action_horizon * policy.action_dim < chunk.noise_dim
    chunk.push({"state": np.ones((1, 3), np.float32)}, [0])
    features = chunk.features([0])
    noise = torch.randn(1, executed.noise_dim)
    full = torch.zeros(1, *chunk.noise_shape)
    first = policy.obs_horizon - 1
    full[:, first : first + policy.action_horizon] = noise.reshape(1, policy.action_horizon, -1)
    assert torch.equal(executed.full_noise(noise), full)
    assert torch.equal(executed.decode(features, noise), chunk.decode(features, full.flatten(1)))
    with pytest.raises(ValueError, match="dsrl_noise 'steps' not in"):
        NoiseBase(policy, 1, noise_span="steps")


def test_chunk_reward_is_the_sum_and_episode_end_ends_the_step() -> None:
    mdp = _mdp()
    mdp.reset()  # seeds 0, 1: episodes of 5 and 6 steps; chunks of 4 actions
    first = mdp.step(torch.zeros(2, mdp.action_dim))
    assert first.reward.tolist() == [4.0, 4.0] and first.env_steps == 8
    assert not first.terminated.any()
    second = mdp.step(torch.zeros(2, mdp.action_dim))
    assert second.reward.tolist() == [1.0, 2.0]  # each stops where its episode ends
    assert second.terminated.tolist() == [True, True] and second.success.all()
    assert second.env_steps == 3
    assert mdp.episodes == 4  # both restarted with fresh seeds
    assert torch.equal(second.start_state[0], mdp.base.features([0])[0])


class SucceedsAtStepFive(gym.Env):
    """Sparse reward: 0 until the task succeeds at the 5th step, 1 there; the episode ends on
    success (as the tasks here do)."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-9, 9, (3,))})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,))
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"state": np.zeros(3, np.float32)}, {}

    def step(self, action):
        self.t += 1
        success = self.t == 5
        return (
            {"state": np.zeros(3, np.float32)},
            float(success),
            success,
            False,
            {"is_success": success},
        )


@pytest.mark.parametrize(("form", "expected"), [("per_env_step", -4.0), ("per_chunk", 0.0)])
def test_dsrl_reward_of_a_chunk_that_succeeds_at_its_fifth_step(form, expected) -> None:
    """A chunk of 8 actions whose 5th succeeds: the reference sums r - 1 over the executed
    steps, (0-1) * 4 + (1-1) = -4, and the step ends there; per chunk: 1 - 1 = 0. A chunk
    that never succeeds gets -8 (per env step) or -1 (per chunk)."""
    from robopolicy.rl.finetune import stored_reward

    envs = gym.vector.SyncVectorEnv(
        [SucceedsAtStepFive], autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    policy = tiny_policy("diffusion", "mlp", pred_horizon=8, action_horizon=8, obs_horizon=1)
    mdp = NoiseMDP(envs, seed_stream(0), NoiseBase(policy, num_envs=1), chunk_critic=False)
    cfg = FinetuneConfig(method="dsrl_sac", reward_offset=-1.0, dsrl_reward=form)
    mdp.reset()
    step = mdp.step(torch.zeros(1, mdp.action_dim))
    assert step.env_steps == 5 and step.terminated.tolist() == [True]
    assert stored_reward(cfg, step).tolist() == [expected]
    mdp.envs.envs[0].t = -100  # the next chunk runs all 8 steps without success
    step = mdp.step(torch.zeros(1, mdp.action_dim))
    assert step.env_steps == 8 and stored_reward(cfg, step).tolist() == [
        -8.0 if form == "per_env_step" else -1.0
    ]


def test_dsrl_reward_form_is_checked() -> None:
    from robopolicy.rl.config import validate_finetune_config

    cfg = FinetuneConfig(method="dsrl_sac", base="x", demo_fraction=0, dsrl_reward="per_step")
    cfg.agent.algo = "sac"
    with pytest.raises(ValueError, match="dsrl_reward 'per_step' not in"):
        validate_finetune_config(cfg)


def test_noise_aliasing_critic_scores_the_executed_chunk() -> None:
    mdp = _mdp(chunk_critic=True)
    state = mdp.reset()
    noise = torch.randn(2, mdp.action_dim)
    step = mdp.step(noise)
    assert step.critic_action.shape == (2, mdp.base.chunk_dim)
    assert torch.equal(step.critic_action, mdp.base.decode(state, noise))


def _na_learner(bound: float) -> NoiseAliasingLearner:
    cfg = AgentConfig(
        algo="sac", hidden_dim=32, critic_heads=2, batch_size=32, action_scale=bound, critic_lr=3e-3
    )
    return NoiseAliasingLearner(
        cfg,
        obs_dim=3,
        noise_dim=4,
        chunk_dim=2,
        decode=lambda s, w: torch.tanh(w[:, :2] + s[:, :2]),
    )


def test_both_variants_respect_the_noise_bound() -> None:
    learner = _na_learner(bound=0.5)
    seen = []
    decode = learner.critic_action
    learner.critic_action = lambda s, w: seen.append(w.abs().max()) or decode(s, w)
    learner.distill(torch.randn(256, 3))
    assert max(seen) <= 0.5
    actions = learner.act(torch.randn(256, 3), explore=True)
    assert actions.abs().max() <= 0.5


def test_distillation_moves_q_w_toward_q_a() -> None:
    torch.manual_seed(0)
    learner = _na_learner(bound=1.5)
    obs = torch.randn(512, 3)

    def gap() -> float:
        noise = torch.randn(512, 4).clamp(-1.5, 1.5)
        with torch.no_grad():
            q_a = learner.critic(obs, learner.critic_action(obs, noise))
            return float(((learner.noise_critic(obs, noise) - q_a) ** 2).mean())

    before = gap()
    for _ in range(300):
        learner.distill(obs[torch.randint(0, 512, (64,))])
    assert gap() < 0.1 * before


@pytest.mark.parametrize(
    ("method", "span", "activation"),
    [("dsrl_na", "chunk", "relu"), ("dsrl_sac", "chunk", "tanh"), ("dsrl_sac", "executed", "relu")],
)
def test_dsrl_finetune_end_to_end(tiny_run, tmp_path, method, span, activation, capsys) -> None:
    cfg = load_config(
        None,
        FinetuneConfig,
        [
            f"method={method}",
            f"dsrl_noise={span}",
            f"base={tiny_run}",
            f"run_dir={tmp_path / method / span}",
            "env_steps=64",
            "warmup_steps=16",
            "eval_every=0",
            "final_eval_episodes=2",
            "demo_fraction=0",
            "reward_offset=-1",
            "num_threads=1",
            "agent.algo=sac",
            "agent.hidden_dim=16",
            "agent.critic_heads=2",
            "agent.batch_size=8",
            "agent.action_scale=1.5",
            f"agent.activation={activation}",
        ],
    )
    result = finetune(cfg)
    assert result["env_steps"] >= 64  # executed actions, chunk by chunk
    saved = read_config(result["checkpoint"])
    loaded_actor = load_rl_agent(result["checkpoint"], saved).actor
    nonlinearity = {type(m) for m in loaded_actor.modules()} & {torch.nn.ReLU, torch.nn.Tanh}
    assert nonlinearity == {ACTIVATIONS[activation]}  # the checkpoint rebuilds the same net
    assert saved["rl"]["action_dim"] == noise_dim(load_policy(tiny_run), span)
    saved["finetune"]["dsrl_noise"] = "executed" if span == "chunk" else "chunk"
    with pytest.raises(CheckpointError, match="noise dims but its base"):
        load_rl_agent(result["checkpoint"], saved)
    _sampled_and_mean_noise_agents(result["checkpoint"])

    assert main(["eval", result["checkpoint"], "n_episodes=2", "video_episodes=0"]) == 0
    assert method in capsys.readouterr().out
    _serve_and_compare(result["checkpoint"], method)


def test_training_evals_follow_dsrl_sample_noise() -> None:
    from robopolicy.rl.finetune import Setup, _eval_agent
    from robopolicy.rl.learner import Learner

    agent = AgentConfig(algo="sac", hidden_dim=8, critic_heads=2)
    cfg = FinetuneConfig(method="dsrl_sac", agent=agent)
    setup = Setup("robopolicy/Lift-v0", {}, policy=tiny_policy("diffusion", "mlp"))
    learner = Learner(agent, obs_dim=4, action_dim=6)
    for sample in (True, False):
        cfg.dsrl_sample_noise = sample
        assert _eval_agent(cfg, setup, learner, mdp=None).sample_noise is sample


def _sampled_and_mean_noise_agents(checkpoint: str) -> None:
    """By default the loaded agent draws its noise from the actor (different draws, different
    chunks); with ``dsrl_sample_noise`` off it plans from the mean noise, whatever the RNG."""
    config = read_config(checkpoint)
    assert config["finetune"]["dsrl_sample_noise"]

    def first_actions(agent, seed: int) -> np.ndarray:
        agent = agent.session()
        agent.setup(1, (3,))
        obs = {k: np.full((1, *s), 0.3, np.float32) for k, s in agent.policy.shapes.obs.items()}
        torch.manual_seed(seed)
        return agent.act(obs, None)[0]

    sampled = load_rl_agent(checkpoint, config)
    assert not np.allclose(first_actions(sampled, 0), first_actions(sampled, 1))
    del config["finetune"]["dsrl_sample_noise"]  # saved before the option: the mean noise
    mean = load_rl_agent(checkpoint, config)
    np.testing.assert_array_equal(first_actions(mean, 0), first_actions(mean, 1))


def _serve_and_compare(checkpoint: str, method: str) -> None:
    """The served steering agent (base + noise actor) acts exactly as the one in process."""
    server = PolicyServer(ServeConfig(checkpoint=checkpoint, port=0))
    url = f"ws://127.0.0.1:{server.start_background()}"
    local = load_rl_agent(checkpoint, read_config(checkpoint)).session()
    local.setup(1, (3,))
    rng = np.random.default_rng(0)
    with PolicyClient(url) as client:
        assert client.metadata["rl"]["method"] == method
        for step in range(12):  # more than one chunk
            if step == 5:
                client.reset()
                local.reset(np.array([True]))
            obs = {
                k: rng.normal(size=shape).astype(np.float32)
                for k, shape in client.metadata["observations"].items()
                for shape in [shape["shape"]]
            }
            torch.manual_seed(step)  # the same draws of the actor's noise on both sides
            served = client.act(obs)
            torch.manual_seed(step)
            expected = local.act({k: v[None] for k, v in obs.items()}, None)[0]
            np.testing.assert_allclose(served, expected, atol=1e-5)
        with pytest.raises(ServerError, match="send 'act' messages"):
            client.chunk({k: v[None].repeat(2, 0) for k, v in obs.items()})
