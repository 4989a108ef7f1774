"""EXPO: the on-the-fly selection, the edit bound, the base's online imitation data, the
demo chunks, a tiny run end to end (eval, serve, export of its one-policy checkpoint), and the
bad input refused before training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bc_fixtures import tiny_policy

from robopolicy.checkpoint import read_config
from robopolicy.cli import main
from robopolicy.config import ConfigError, load_config
from robopolicy.rl.actors import load_rl_agent
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.config import ExpoConfig, FinetuneConfig, validate_finetune_config
from robopolicy.rl.expo import (
    ExpoAgent,
    ExpoLearner,
    InRange,
    OnlineEpisodes,
    base_chunks,
    candidates,
    demo_chunk_buffer,
    select,
)
from robopolicy.rl.finetune import finetune
from robopolicy.rl.networks import CriticEnsemble


def _learner(**expo) -> ExpoLearner:
    agent = AgentConfig(algo="sac", hidden_dim=16, critic_heads=3, batch_size=8)
    policy = tiny_policy("diffusion", "mlp")
    return ExpoLearner(agent, ExpoConfig(**expo), policy)


def test_select_takes_the_candidate_of_highest_mean_q() -> None:
    """Two candidates: heads (3, 3, -3) (mean 1, min -3) and (0.5, 0.5, 0.5): the mean picks
    the first, where the min would have picked the second."""
    table = torch.tensor([[3.0, 3.0, -3.0], [0.5, 0.5, 0.5]])

    class TableCritic(CriticEnsemble):
        def forward(self, obs, actions):
            return table[actions[:, 0].long()].T  # (heads, rows)

    critic = TableCritic(2, 1, 3, 4, 1)
    options = torch.tensor([[[0.0], [1.0]], [[1.0], [1.0]]])
    chosen = select(critic, torch.zeros(2, 2), options)
    assert chosen.tolist() == [[0.0], [1.0]]


def test_candidates_are_base_samples_and_their_bounded_edits() -> None:
    learner = _learner(num_samples=3, edit_scale=0.05)
    policy = learner.policy
    features = policy.encode_obs({"state": torch.randn(2, policy.obs_horizon, 3)})
    torch.manual_seed(1)
    both = candidates(policy, learner.actor, features, 3, (), explore=True)
    torch.manual_seed(1)
    base = base_chunks(policy, features, 3, ())
    assert both.shape == (2, 6, policy.action_horizon * policy.action_dim)
    assert torch.equal(both[:, :3], base)
    shift = both[:, 3:] - base.clamp(-1, 1)
    assert 0 < shift.abs().max() <= 0.05 + 1e-6  # the edit bound beta
    chosen = learner.act(features, explore=False)
    assert chosen.shape == (2, policy.action_horizon * policy.action_dim)


def test_learner_trains_the_base_by_imitation_but_not_its_encoder() -> None:
    learner = _learner(num_samples=2, base_update_every=1)
    policy = learner.policy
    encoder = {k: v.clone() for k, v in policy.obs_encoder.state_dict().items()}
    denoiser = {k: v.clone() for k, v in policy.denoiser.state_dict().items()}

    class Windows:
        def metrics(self):
            return {}

        def sample(self, device):
            return {
                "obs": {"state": torch.randn(8, policy.obs_horizon, 3)},
                "actions": torch.rand(8, policy.pred_horizon, 2) * 2 - 1,
            }

    learner.imitation = Windows()
    features = torch.randn(8, learner.obs_dim)
    from robopolicy.rl.replay import Batch

    batch = Batch(
        features,
        torch.rand(8, learner.action_dim) * 2 - 1,
        -torch.ones(8),
        torch.randn(8, learner.obs_dim),
        torch.full((8,), 0.99),
    )
    metrics = learner.update(batch)
    assert {"critic_loss", "actor_loss", "base_loss", "alpha"} <= set(metrics)
    assert all(torch.equal(encoder[k], v) for k, v in policy.obs_encoder.state_dict().items())
    assert any(not torch.equal(denoiser[k], v) for k, v in policy.denoiser.state_dict().items())
    assert not policy.training  # back to eval after the imitation step


def test_online_episodes_are_indexed_in_blocks_and_round_trip() -> None:
    online = OnlineEpisodes(["state"], (2, 8, 4), refresh=10, capacity=12)
    obs = [{"state": np.full(3, t, np.float32)} for t in range(7)]
    online.add(obs, [np.full(2, t, np.float32) for t in range(6)])  # 6 steps: final obs dropped
    assert online.windows() is None  # below the block size
    online.add(obs, [np.full(2, t, np.float32) for t in range(5)])
    windows = online.windows()
    assert windows is not None and windows.actions.shape == (11, 2)
    copy = OnlineEpisodes(["state"], (2, 8, 4), refresh=10, capacity=12)
    copy.load_state_dict(online.state_dict())
    assert torch.equal(copy.windows().actions, windows.actions)
    assert [e.num_samples for e in copy.episodes] == [6, 5]
    for _ in range(2):
        online.add(obs, [np.full(2, t, np.float32) for t in range(5)])
    assert online.windows().actions.shape == (10, 2)  # the oldest beyond 12 steps dropped
    assert [e.num_samples for e in online.episodes] == [5, 5]


def test_online_episodes_are_cut_where_they_leave_the_base_range() -> None:
    """The demos span [0, 1] per feature (normalised to [-1, 1]); limit 1.5 admits [-0.25,
    1.25]: an episode is kept up to its first frame beyond, and the kept share is counted."""
    from robopolicy.data.normalizer import Normalizer

    normalizer = Normalizer.fit({"state": np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)})
    in_range = InRange(normalizer, limit=1.5)
    states = np.array([[0.5, 0.5], [1.2, -0.2], [0.5, 1.3], [0.5, 0.5]], np.float32)
    assert in_range.prefix({"state": states}) == 2
    assert in_range.prefix({"state": states[:2]}) == 2
    assert in_range.prefix({"state": states[2:]}) == 0

    online = OnlineEpisodes(["state"], (1, 2, 1), refresh=1, capacity=100, in_range=in_range)
    online.add([{"state": s} for s in states], [np.full(2, t, np.float32) for t in range(4)])
    assert [e.num_samples for e in online.episodes] == [2]
    assert online.episodes[0].actions[:, 0].tolist() == [0.0, 1.0]
    online.add([{"state": s} for s in states[2:]], [np.zeros(2, np.float32)] * 2)
    assert len(online.episodes) == 1  # nothing in range: nothing kept
    assert online.kept_fraction == pytest.approx(2 / 6)
    restored = OnlineEpisodes(["state"], (1, 2, 1), refresh=1, capacity=100, in_range=in_range)
    restored.load_state_dict(online.state_dict())
    assert restored.kept_fraction == pytest.approx(2 / 6)


def test_base_ema_acts_with_an_average_of_the_imitated_base() -> None:
    """With expo.base_ema the imitation trains a copy; the acting base (checkpointed) moves
    toward it by the Polyak rate per imitation step."""
    rate = 0.25
    learner = _learner(num_samples=2, base_ema=rate)
    acting, imitated = learner.policy, learner.imitated_base
    assert imitated is not acting
    before = {k: v.clone() for k, v in acting.denoiser.state_dict().items()}
    learner.imitation = type(
        "Windows",
        (),
        {
            "metrics": lambda self: {},
            "sample": lambda self, device: {
                "obs": {"state": torch.randn(8, acting.obs_horizon, 3)},
                "actions": torch.rand(8, acting.pred_horizon, 2) * 2 - 1,
            },
        },
    )()
    learner._update_base(learner.imitation.sample("cpu"))
    for key, old in before.items():
        trained = imitated.denoiser.state_dict()[key]
        expected = old + rate * (trained - old)
        torch.testing.assert_close(acting.denoiser.state_dict()[key], expected)
    assert any(not torch.equal(before[k], v) for k, v in acting.denoiser.state_dict().items())
    assert "imitated.denoiser" in " ".join(learner.state_dict())  # resumes with its copy


def test_demo_chunks_sum_rewards_and_chain_by_the_chunk_length() -> None:
    from robopolicy.data.hdf5 import Episode

    policy = tiny_policy("diffusion", "mlp")  # action horizon 4
    steps = 6
    episode = Episode(
        obs={"state": np.random.randn(steps, 3).astype(np.float32)},
        next_obs={"state": np.random.randn(steps, 3).astype(np.float32)},
        actions=np.random.uniform(-1, 1, (steps, 2)).astype(np.float32),
        rewards=np.array([0, 0, 0, 0, 0, 1], np.float32),
        dones=np.array([0, 0, 0, 0, 0, 1]),
        states=np.zeros((steps, 1)),
    )
    buffer = demo_chunk_buffer(policy, [episode], (), reward_offset=-1.0, per_env_step=True)
    assert len(buffer) == steps
    # chains by start offset: 0, 4 | 1, 5 | 2 | 3
    rewards = buffer.rewards[: buffer.filled, 0].tolist()
    assert rewards == [-4.0, -1.0, -4.0, 0.0, -3.0, -2.0]
    assert buffer.terminated[: buffer.filled, 0].tolist() == [0, 1, 0, 1, 1, 1]
    batch = buffer._n_step(torch.tensor([0]), torch.tensor([0]), torch.tensor([5]), 2, 0.5)
    assert batch.returns.tolist() == [-4.0 + 0.5 * -1.0]  # chunk at 0, then the chunk at 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("expo.edit_scale=0", "expo.edit_scale must be > 0"),
        ("expo.num_samples=0", "expo.num_samples must be >= 1"),
        ("agent.algo=td3", "built on SAC"),
        ("expo.base_ema=1", "expo.base_ema"),
        ("expo.imitation_obs_limit=0.5", "expo.imitation_obs_limit must be >= 1"),
    ],
)
def test_bad_expo_settings_are_refused_before_training(override, message) -> None:
    cfg = load_config(None, FinetuneConfig, ["method=expo", "base=x", "agent.algo=sac", override])
    with pytest.raises(ValueError, match=message):
        validate_finetune_config(cfg)


def test_expo_needs_a_dataset_for_its_imitation(tiny_run, tmp_path, monkeypatch) -> None:
    cfg = _expo_config(tiny_run, tmp_path / "rl", "demos=null")
    monkeypatch.setattr(
        "robopolicy.rl.finetune.read_config",
        lambda path: {**read_config(path), "task": {"env_id": "robopolicy/Lift-v0"}},
    )
    with pytest.raises(ConfigError, match="expo trains its base by imitation"):
        finetune(cfg)
    assert not (tmp_path / "rl").exists()  # refused before the run's folder


def _expo_config(tiny_run, run_dir, *extra: str) -> FinetuneConfig:
    return load_config(
        None,
        FinetuneConfig,
        [
            "method=expo",
            f"base={tiny_run}",
            f"run_dir={run_dir}",
            "env_steps=64",
            "warmup_steps=16",
            "eval_every=32",
            "eval_episodes=2",
            "final_eval_episodes=2",
            "video_episodes=0",
            "demo_fraction=0.5",
            "reward_offset=-1",
            "num_threads=1",
            "agent.algo=sac",
            "agent.hidden_dim=16",
            "agent.critic_heads=3",
            "agent.batch_size=8",
            "agent.n_step=2",
            "expo.num_samples=2",
            "expo.base_batch_size=8",
            "expo.window_refresh=8",
            *extra,
        ],
    )


def test_expo_finetune_end_to_end(tiny_run, tmp_path, capsys) -> None:
    result = finetune(_expo_config(tiny_run, tmp_path / "rl"))
    assert result["env_steps"] >= 64
    checkpoint = result["checkpoint"]
    config = read_config(checkpoint)
    assert config["rl"]["method"] == "expo" and "policy" in config and "shapes" in config
    agent = load_rl_agent(checkpoint, config)
    assert isinstance(agent, ExpoAgent) and agent.num_samples == 2
    # the checkpoint's base is the trained one, not the BC checkpoint it started from
    from robopolicy.checkpoint import load_policy

    start = load_policy(tiny_run).denoiser.state_dict()
    trained = agent.policy.denoiser.state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    assert main(["eval", checkpoint, "n_episodes=2", "video_episodes=0"]) == 0
    assert "expo" in capsys.readouterr().out
    _served_expo_acts(checkpoint)
    out = tmp_path / "export"
    assert main(["export", checkpoint, str(out)]) == 0
    assert main(["eval", str(out), f"out_dir={tmp_path / 'ev'}", "n_episodes=2"]) == 0
    assert "expo" in capsys.readouterr().out


def _served_expo_acts(checkpoint: str) -> None:
    """The served EXPO policy acts exactly as the one in process, chunk after chunk."""
    from robopolicy.deploy.client import PolicyClient
    from robopolicy.deploy.server import PolicyServer, ServeConfig

    server = PolicyServer(ServeConfig(checkpoint=checkpoint, port=0, num_threads=1))
    url = f"ws://127.0.0.1:{server.start_background()}"
    local = load_rl_agent(checkpoint, read_config(checkpoint)).session()
    local.setup(1, server.metadata["discrete_action_dims"])
    rng = np.random.default_rng(0)
    with PolicyClient(url) as client:
        assert client.metadata["rl"]["method"] == "expo"
        for step in range(6):  # more than one chunk of 4
            obs = {
                k: rng.normal(size=spec["shape"]).astype(np.float32)
                for k, spec in client.metadata["observations"].items()
            }
            torch.manual_seed(step)  # the same base samples on both sides
            served = client.act(obs)
            torch.manual_seed(step)
            expected = local.act({k: v[None] for k, v in obs.items()}, None)[0]
            np.testing.assert_allclose(served, expected, atol=1e-5)


def test_bench_rl_suite_has_every_method_on_both_tasks() -> None:
    from robopolicy.bench import SUITES, rl
    from robopolicy.config import CONFIG_DIR

    assert SUITES["rl"] == "robopolicy.bench.rl"
    cfg = load_config(CONFIG_DIR / "bench" / "rl.yaml", rl.Config)
    assert [t.name for t in cfg.tasks] == ["lift", "pickplace"]
    for task in cfg.tasks:
        assert sorted(task.methods) == ["dsrl_na", "dsrl_sac", "expo", "residual"]
        assert task.methods["expo"] == f"rl/expo_{task.name}.yaml"


def test_bench_rl_runs_expo_beside_residual(tiny_run, tmp_path) -> None:
    """One tiny bench: both methods' curves on the task's plot, the best eval in the report."""
    from omegaconf import OmegaConf

    from robopolicy.bench import rl

    tiny = [
        "agent.hidden_dim=16",
        "agent.critic_heads=2",
        "agent.batch_size=8",
        "num_threads=1",
        "warmup_steps=16",
        "critic_warmup_updates=2",
        "expo.num_samples=2",
        "expo.base_batch_size=8",
    ]
    cfg = OmegaConf.merge(
        OmegaConf.structured(rl.Config),
        {
            "suite": "rl",
            "tasks": [
                {
                    "name": "lift",
                    "base_train_config": "train/lift_diffusion_mlp_scarce.yaml",
                    "collect_config": "collect/lift_scarce.yaml",
                    "base": str(tiny_run),
                    "methods": {"residual": "rl/residual_lift.yaml", "expo": "rl/expo_lift.yaml"},
                }
            ],
            "seeds": [0],
            "env_steps": 24,
            "eval_every": 24,
            "eval_episodes": 2,
            "final_eval_episodes": 2,
            "overrides": tiny,
            "out_root": str(tmp_path),
        },
    )
    runs = rl.run(cfg)["tasks"]["lift"]["runs"]
    assert sorted(runs) == ["expo/seed0", "residual/seed0"]
    assert runs["expo/seed0"]["method"] == "expo"
    out = next((tmp_path / "rl").iterdir())
    assert (out / "lift.png").is_file()
    report = (out / "report.md").read_text()
    assert "best eval per seed (at env steps)" in report and "lift | expo | 1 |" in report
