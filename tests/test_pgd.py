"""Policy-guided diffusion: windows, transforms, EDM sampling, guidance, offline agents, and the
offline-data -> synth -> offline pipeline end to end on a tiny Hopper run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.cli import main
from robopolicy.config import load_config
from robopolicy.offline.agents import OfflineAgent, OfflineAgentConfig, load_offline_agent
from robopolicy.offline.config import OfflineConfig
from robopolicy.offline.train import train_offline
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.synth.config import GuideConfig, SamplerConfig, SynthConfig
from robopolicy.synth.dynamics import dynamics_error, relabel_with_simulator
from robopolicy.synth.edm import EDMConfig, churn_gammas, edm_sample, karras_sigmas
from robopolicy.synth.generate import generate
from robopolicy.synth.guidance import PolicyGuide, action_log_likelihood, guidance_schedule
from robopolicy.synth.make_data import OfflineDataConfig, make_offline_data
from robopolicy.synth.model import TrajectoryModel, load_trajectory_model
from robopolicy.synth.offline_data import OfflineData, load_offline_data
from robopolicy.synth.pool import TransitionPool, sample_real_and_synthetic, to_transitions
from robopolicy.synth.train import train_trajectory_model
from robopolicy.synth.trajectories import (
    ACTION_CLIP,
    RowLayout,
    RowNormalizer,
    dataset_rows,
    make_windows,
    rows_to_parts,
    window_starts,
)


# ---- windows and transforms ---------------------------------------------------------------------
def test_windows_never_cross_episode_ends_and_cover_each_end() -> None:
    assert window_starts(np.array([10, 13, 30]), 4, 3).tolist() == [0, 3, 6, 13, 16, 19, 22, 25, 26]
    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.integers(1, 40, size=50))
    starts = window_starts(ends, 8, 3)
    episode_of = np.searchsorted(ends, np.arange(ends[-1]), side="right")
    for s in starts:
        assert episode_of[s] == episode_of[s + 7], f"window at {s} crosses an episode end"
    long_enough = [e for b, e in zip(np.r_[0, ends[:-1]], ends, strict=True) if e - b >= 8]
    assert set(long_enough) <= {s + 8 for s in starts}  # every long episode's end is covered


def _tiny_data(lengths=(12, 5, 9), terminal_last=True) -> OfflineData:
    n = sum(lengths)
    rng = np.random.default_rng(1)
    ends = np.cumsum(lengths)
    terminals = np.zeros(n, dtype=bool)
    if terminal_last:
        terminals[ends - 1] = True
    return OfflineData(
        obs=rng.normal(size=(n, 3)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_obs=rng.normal(size=(n, 3)).astype(np.float32),
        terminals=terminals,
        episode_ends=ends,
        env_id="Hopper-v5",
        env_kwargs={},
        references=None,
    )


def test_window_rows_come_from_one_episode_and_short_episodes_are_skipped() -> None:
    data = _tiny_data()
    windows = make_windows(data, 8, 4)
    assert windows.shape == (1 + 2 + 1, 8, 3 + 2 + 2)  # episode 1 is too short
    assert windows[:, :-1, -1].sum() == 0  # a terminal can only be a window's last row
    with pytest.raises(ValueError, match="no episode is as long as the window"):
        make_windows(data, 16, 4)


def test_arctanh_tanh_transform_round_trips_within_clipping() -> None:
    data = _tiny_data()
    data.actions[:3] = [[1.0, -1.0], [0.9995, -0.9995], [0.0, 0.5]]
    layout = RowLayout(3, 2)
    rows = torch.as_tensor(dataset_rows(data))
    normalizer = RowNormalizer(layout.width).fit(rows)
    back = normalizer.unnormalize(normalizer.normalize(rows))
    parts = rows_to_parts(back, layout)
    expected = np.clip(data.actions, -ACTION_CLIP, ACTION_CLIP)
    np.testing.assert_allclose(parts["actions"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(parts["obs"].numpy(), data.obs, atol=1e-5)
    assert parts["dones"].numpy().tolist() == data.terminals.tolist()


# ---- EDM sampler ----------------------------------------------------------------------------
class _GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of N(0, s^2 I) data: D(x; sigma) = x s^2 / (s^2 + sigma^2)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma).reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.scale**2 / (self.scale**2 + sigma**2)


FAST = SamplerConfig(kind="fast_heun", num_steps=48)


@pytest.mark.parametrize("sampler", [FAST, SamplerConfig()], ids=["fast_heun", "reference"])
@pytest.mark.parametrize("scale", [0.3, 1.5])
def test_edm_samplers_with_the_exact_denoiser_recover_the_data_distribution(scale, sampler) -> None:
    samples = edm_sample(
        _GaussianDenoiser(scale),
        (4000, 4, 2),
        sampler,
        EDMConfig(),
        generator=torch.Generator().manual_seed(0),
    )
    assert samples.std().item() == pytest.approx(scale, rel=0.03)
    assert abs(samples.mean().item()) < 0.02 * scale + 0.01


def test_churn_follows_karras_and_without_churn_the_reference_sampler_is_the_fast_one() -> None:
    reference = SamplerConfig(num_steps=256)
    sigmas = karras_sigmas(256, EDMConfig())
    gammas = churn_gammas(sigmas, reference)
    inside = (sigmas[:-1] >= 0.05) & (sigmas[:-1] <= 50.0)
    assert inside.any() and not inside.all()
    torch.testing.assert_close(gammas[inside], torch.full((int(inside.sum()),), 80 / 256))
    assert gammas[~inside].abs().max() == 0
    # few steps: gamma is capped at sqrt(2) - 1
    assert churn_gammas(karras_sigmas(16, EDMConfig()), SamplerConfig(num_steps=16)).max() == (
        pytest.approx(math.sqrt(2) - 1)
    )
    assert churn_gammas(sigmas, SamplerConfig(kind="fast_heun")).abs().max() == 0

    def sample(cfg):
        return edm_sample(
            _GaussianDenoiser(0.7),
            (64, 4, 2),
            cfg,
            EDMConfig(),
            None,
            torch.Generator().manual_seed(3),
        )

    no_churn = SamplerConfig(num_steps=24, s_churn=0.0)
    torch.testing.assert_close(
        sample(no_churn), sample(SamplerConfig(kind="fast_heun", num_steps=24)), rtol=0, atol=0
    )
    churned = sample(SamplerConfig(num_steps=24))
    assert not torch.allclose(churned, sample(no_churn))


# ---- guidance -------------------------------------------------------------------------------
class _LinearGaussianPolicy:
    """pi(a | s) = N(W s, sigma^2 I): log-likelihood with a hand-computable gradient."""

    def __init__(self, weight: torch.Tensor, sigma: float) -> None:
        self.weight, self.sigma = weight, sigma

    def mean(self, obs):
        return obs @ self.weight.T

    def log_prob(self, obs, actions):
        z = (actions - self.mean(obs)) / self.sigma
        return (-0.5 * z**2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


def _layout_and_normalizer(seed=0):
    layout = RowLayout(3, 2)
    g = torch.Generator().manual_seed(seed)
    normalizer = RowNormalizer(layout.width)
    normalizer.mean.copy_(torch.randn(layout.width, generator=g) * 0.3)
    normalizer.std.copy_(torch.rand(layout.width, generator=g) + 0.5)
    return layout, normalizer


def test_guidance_step_matches_the_hand_computed_gradient() -> None:
    layout, normalizer = _layout_and_normalizer()
    g = torch.Generator().manual_seed(1)
    policy = _LinearGaussianPolicy(torch.randn(2, 3, generator=g), sigma=0.7)
    x = torch.randn(4, 6, layout.width, generator=g)
    # by hand: a = tanh(u), u = x_a std_a + mean_a, s = x_s std_s + mean_s
    std, mean = normalizer.std, normalizer.mean
    s = x[..., :3] * std[:3] + mean[:3]
    u = x[..., 3:5] * std[3:5] + mean[3:5]
    a = torch.tanh(u)
    grad = -(a - policy.mean(s)) / policy.sigma**2 * (1 - a**2) * std[3:5]
    raw = PolicyGuide(policy, 0.5, layout, normalizer).gradient(x)  # the reference: no norm
    torch.testing.assert_close(raw[..., 3:5], grad, atol=1e-5, rtol=1e-4)
    assert raw[..., :3].abs().max() == 0 and raw[..., 5:].abs().max() == 0
    normalized = grad / (grad.flatten(1).norm(dim=1)[:, None, None] + 1e-8)
    guide = PolicyGuide(policy, 0.5, layout, normalizer, GuideConfig(normalize=True))
    direction = guide.gradient(x)
    torch.testing.assert_close(direction[..., 3:5], normalized, atol=1e-5, rtol=1e-4)
    # one sampler step moves exactly lambda_i along it
    moved = guide(x, torch.tensor(1.0), 2, 8)
    torch.testing.assert_close(moved - x, guidance_schedule(0.5, 2, 8) * direction)


def test_guidance_schedule_follows_the_anchor_formula_and_ends_at_zero() -> None:
    n = 8
    for i in range(n - 1):
        expected = 2.0 * ((1 - i / n) + 0.3 * math.sin(math.pi * (i + 1) / n))
        assert guidance_schedule(2.0, i, n) == pytest.approx(expected)
        c = 0.7
        expected = 2.0 * ((1 - i / n) + c * math.sin(math.pi * (i + 1) / n))
        assert guidance_schedule(2.0, i, n, GuideConfig(sine_weight=c)) == pytest.approx(expected)
        assert guidance_schedule(2.0, i, n, GuideConfig(schedule="constant")) == 2.0
    assert guidance_schedule(2.0, n - 1, n) == 0.0
    assert guidance_schedule(2.0, n - 1, n, GuideConfig(schedule="constant")) == 0.0
    delayed = GuideConfig(delay_steps=3)
    assert [guidance_schedule(2.0, i, n, delayed) for i in range(3)] == [0.0] * 3
    assert guidance_schedule(2.0, 3, n, delayed) == guidance_schedule(2.0, 3, n)


def _tiny_model(layout, normalizer=None) -> TrajectoryModel:
    torch.manual_seed(0)
    model = TrajectoryModel(layout, down_dims=(8, 16), kernel_size=3).eval()
    if normalizer is not None:
        model.normalizer.load_state_dict(normalizer.state_dict())
    return model


def test_coefficient_zero_equals_unguided_and_guidance_raises_the_likelihood() -> None:
    layout, normalizer = _layout_and_normalizer()
    model = _tiny_model(layout, normalizer)
    policy = _LinearGaussianPolicy(
        torch.randn(2, 3, generator=torch.Generator().manual_seed(3)), 0.3
    )
    sampler = SamplerConfig(num_steps=6, length=8, batch_size=16)

    def sample(coefficient):
        guide = PolicyGuide(policy, coefficient, layout, model.normalizer)
        return model.sample(32, sampler, guide, torch.Generator().manual_seed(5))

    unguided = model.sample(32, sampler, None, torch.Generator().manual_seed(5))
    torch.testing.assert_close(sample(0.0), unguided, rtol=0, atol=0)
    torch.testing.assert_close(
        generate(model, 32, sampler, seed=5), generate(model, 32, sampler, policy, 0.0, seed=5)
    )
    guided = sample(2.0)
    assert not torch.equal(guided, unguided)
    lik = lambda x: action_log_likelihood(x, policy, layout, model.normalizer).mean()  # noqa: E731
    assert lik(guided) > lik(unguided) + 1.0
    with pytest.raises(ValueError, match="needs a target policy"):
        generate(model, 4, sampler, None, 1.0)


class _UnitGradientGuide(PolicyGuide):
    """PolicyGuide whose gradient is 1 on every action entry: the push is the schedule alone."""

    def __init__(self, coefficient: float, guide: GuideConfig) -> None:
        layout, normalizer = _layout_and_normalizer()
        super().__init__(None, coefficient, layout, normalizer, guide)

    def gradient(self, x):
        step = torch.zeros_like(x)
        step[..., self.layout.actions] = 1.0
        if self.options.normalize:
            step = step / step.flatten(1).norm(dim=1)[:, None, None]
        return step


@pytest.mark.parametrize(
    "guide, total",
    [
        # lambda sum_{i<N-1} [(1 - i/N) + 0.3 sin(pi (i+1)/N)]
        #   = lambda [(N-1) - (N-2)(N-1)/(2N) + 0.3 cot(pi / 2N)] = 177.3879 lambda at N = 256
        (GuideConfig(), 177.3879),
        (GuideConfig(delay_steps=10), 167.3615),  # the same sum from i = 10
        (GuideConfig(schedule="constant"), 255.0),  # lambda (N - 1)
        (GuideConfig(normalize=True), 177.3879),  # now the push's norm per trajectory
    ],
    ids=["reference", "delay10", "constant", "normalized"],
)
def test_total_guidance_push_per_sample_is_pinned_in_the_reference_units(guide, total) -> None:
    """The units of lambda: 256 reference steps, each pushing lambda_i g. A change to the step
    accounting, the schedule or the normalisation shifts these numbers."""
    coefficient = 0.5
    unit = _UnitGradientGuide(coefficient, guide)
    pushes = []

    def spy(x, sigma, step, num_steps):
        moved = unit(x, sigma, step, num_steps)
        pushes.append(moved - x)
        return moved

    width = unit.layout.width
    edm_sample(
        _GaussianDenoiser(1.0),
        (2, 4, width),
        SamplerConfig(),
        EDMConfig(),
        spy,
        torch.Generator().manual_seed(0),
    )
    assert len(pushes) == 256
    summed = torch.stack(pushes).sum(dim=0)
    actions = summed[..., unit.layout.actions]
    assert summed[..., : unit.layout.obs_dim].abs().max() == 0
    assert summed[..., unit.layout.reward :].abs().max() == 0
    if guide.normalize:
        per_sample = actions.flatten(1).norm(dim=1)
        torch.testing.assert_close(
            per_sample, torch.full((2,), coefficient * total), atol=1e-3, rtol=0
        )
    else:
        torch.testing.assert_close(
            actions, torch.full_like(actions, coefficient * total), atol=1e-3, rtol=0
        )
    first = [float(p.abs().max()) for p in pushes[: guide.delay_steps + 1]]
    assert first[:-1] == [0.0] * guide.delay_steps and first[-1] > 0
    assert pushes[-1].abs().max() == 0


def test_guidance_on_the_denoised_estimate_pushes_the_noisy_sample() -> None:
    layout, normalizer = _layout_and_normalizer()
    policy = _LinearGaussianPolicy(
        torch.randn(2, 3, generator=torch.Generator().manual_seed(2)), 0.5
    )
    denoiser = _GaussianDenoiser(0.8)
    x = 3.0 * torch.randn(4, 6, layout.width, generator=torch.Generator().manual_seed(4))
    sigma = torch.tensor(2.5)
    noisy = PolicyGuide(policy, 0.5, layout, normalizer)
    denoised = PolicyGuide(
        policy, 0.5, layout, normalizer, GuideConfig(target="denoised"), denoiser
    )
    weight = guidance_schedule(0.5, 3, 16)
    torch.testing.assert_close(
        denoised(x, sigma, 3, 16) - x, weight * noisy.gradient(denoiser(x, sigma))
    )
    torch.testing.assert_close(noisy(x, sigma, 3, 16) - x, weight * noisy.gradient(x))
    assert not torch.allclose(denoised(x, sigma, 3, 16), noisy(x, sigma, 3, 16))
    with pytest.raises(ValueError, match="needs the denoiser"):
        PolicyGuide(policy, 0.5, layout, normalizer, GuideConfig(target="denoised"))


# ---- transitions and pools --------------------------------------------------------------------
def test_generated_trajectories_become_transitions_cut_at_the_first_done() -> None:
    layout = RowLayout(1, 1)
    rows = torch.zeros(2, 5, layout.width)
    rows[:, :, 0] = torch.arange(5.0)  # obs = row index
    rows[0, 2, layout.done] = 1.0  # trajectory 0 ends at row 2
    rows[0, 4, layout.done] = 1.0  # ...so this later done is never read
    t = to_transitions(rows, layout)
    assert t["obs"][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 3]
    assert t["next_obs"][:, 0].tolist()[:2] == [1, 2] and t["next_obs"][3:, 0].tolist() == [
        1,
        2,
        3,
        4,
    ]
    assert t["terminals"].tolist() == [False, False, True, False, False, False, False]


def test_pool_discount_and_mixed_batches() -> None:
    n = 10
    pool = TransitionPool(
        {
            "obs": torch.zeros(n, 2),
            "actions": torch.zeros(n, 1),
            "rewards": torch.ones(n),
            "next_obs": torch.zeros(n, 2),
            "terminals": torch.arange(n) % 2 == 0,
        }
    )
    batch = pool.sample(256, 0.9)
    assert sorted(set(batch.discount.tolist())) == pytest.approx([0.0, 0.9])
    mixed = sample_real_and_synthetic(pool, pool, 256, 240 / 256, 0.99)
    assert mixed.obs.shape[0] == 256
    with pytest.raises(ValueError, match="non-finite"):
        TransitionPool({**pool.__dict__, "obs": torch.full((n, 2), float("nan"))})


# ---- offline agents learn -----------------------------------------------------------------
@pytest.mark.parametrize("algo", ["td3bc", "iql"])
def test_offline_agents_move_toward_the_better_actions_of_the_data(algo) -> None:
    """One-step problem: reward -(a - 0.5)^2 for data actions uniform in [-1, 1]; behaviour
    cloning alone would give mean action 0."""
    torch.manual_seed(0)
    n = 4096
    obs = torch.randn(n, 2)
    actions = torch.rand(n, 1) * 2 - 1
    pool = TransitionPool(
        {
            "obs": obs,
            "actions": actions,
            "rewards": -((actions[:, 0] - 0.5) ** 2),
            "next_obs": obs,
            "terminals": torch.ones(n, dtype=torch.bool),
        }
    )
    agent = OfflineAgent(OfflineAgentConfig(algo=algo, hidden_dim=64, lr=1e-3), 2, 1)
    for _ in range(400):
        agent.update(pool.sample(128, 0.99))
    chosen = agent(torch.randn(256, 2)).mean().item()
    assert chosen > 0.25, f"{algo} mean action {chosen:.2f}, behaviour cloning gives 0"


# ---- end to end: SAC run -> datasets -> trajectory model -> offline agents -----------------------
@pytest.fixture(scope="module")
def sac_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sac")
    cfg = load_config(
        "configs/rl/sac_hopper.yaml",
        FinetuneConfig,
        [
            f"run_dir={run}",
            "env_steps=300",
            "warmup_steps=200",
            "save_every=150",
            "eval_every=0",
            "final_eval_episodes=1",
            "num_threads=1",
            "agent.hidden_dim=16",
            "agent.batch_size=16",
        ],
    )
    finetune(cfg)
    return run


@pytest.fixture(scope="module")
def medium(sac_run, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("offline") / "medium.hdf5"
    cfg = OfflineDataConfig(
        source=str(sac_run), policy_step=150, transitions=400, output=str(out), reference_episodes=1
    )
    make_offline_data(cfg)
    return str(out)


@pytest.fixture(scope="module")
def synth_run(medium, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("synth")
    cfg = load_config(
        None,
        SynthConfig,
        [
            f"dataset={medium}",
            f"run_dir={run}",
            "horizon=8",
            "stride=4",
            "down_dims=[8,16]",
            "steps=4",
            "batch_size=8",
            "warmup_steps=1",
            "log_every=2",
            "inspect_trajectories=4",
            "sampler.num_steps=2",
            "sampler.length=8",
            "num_threads=1",
        ],
    )
    train_trajectory_model(cfg)
    return run


def test_offline_datasets_from_a_sac_run(sac_run, medium, tmp_path) -> None:
    data = load_offline_data(medium)
    assert len(data.actions) == 400 and data.env_id == "Hopper-v5"
    assert set(data.references) >= {"random", "expert"}
    # episodes end in a terminal (fell) or a timeout (cut by the budget), never both
    assert not (data.terminals & data.timeouts).any() and data.timeouts[-1] or data.terminals[-1]
    replay = make_offline_data(
        OfflineDataConfig(
            source=str(sac_run),
            kind="medium_replay",
            policy_step=150,
            output=str(tmp_path / "mr.hdf5"),
            reference_episodes=1,
        )
    )
    assert replay["transitions"] == 150  # everything the replay held at that checkpoint


def test_dynamics_error_of_real_transitions_is_zero(medium) -> None:
    tensors = load_offline_data(medium).tensors()
    result = dynamics_error("Hopper-v5", {}, tensors, limit=200)
    assert result["next_state_mse"] < 1e-6 and result["reward_mse"] < 1e-8
    shuffled = {**tensors, "next_obs": tensors["next_obs"].flip(0)}
    assert dynamics_error("Hopper-v5", {}, shuffled, limit=200)["next_state_mse"] > 0.01


def test_relabelling_with_the_simulator_restores_true_transitions(medium) -> None:
    real = {k: v[:100] for k, v in load_offline_data(medium).tensors().items()}
    corrupted = {
        **real,
        "next_obs": real["next_obs"] + 1.0,
        "rewards": -real["rewards"],
        "terminals": torch.zeros_like(real["terminals"]),
    }
    fixed = relabel_with_simulator("Hopper-v5", {}, corrupted)
    torch.testing.assert_close(fixed["next_obs"], real["next_obs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed["rewards"], real["rewards"], atol=1e-5, rtol=0)
    assert torch.equal(fixed["terminals"], real["terminals"]) and real["terminals"].any()
    assert fixed["obs"] is corrupted["obs"] and fixed["actions"] is corrupted["actions"]


def test_trajectory_model_saves_loads_and_reports(synth_run) -> None:
    model, config = load_trajectory_model(synth_run)
    assert config["trajectory_model"]["obs_dim"] == 11
    report = json.loads((synth_run / "inspect.json").read_text())
    assert report["trajectories"] == 4 and "next_state_mse" in report["dynamics"]
    assert model.normalizer.std.min() > 0


def test_offline_training_with_guided_synthetic_data_end_to_end(
    medium, synth_run, tmp_path, capsys
):
    cfg = load_config(
        None,
        OfflineConfig,
        [
            f"dataset={medium}",
            f"run_dir={tmp_path / 'off'}",
            "steps=20",
            "eval_every=10",
            "eval_episodes=1",
            "final_eval_episodes=1",
            "log_every=5",
            "num_threads=1",
            "agent.hidden_dim=16",
            "agent.batch_size=16",
            f"synthetic.model={synth_run}",
            "synthetic.guidance=0.5",
            "synthetic.trajectories=4",
            "synthetic.regenerate_every=10",
            "synthetic.sampler.num_steps=2",
            "synthetic.sampler.length=8",
        ],
    )
    result = train_offline(cfg)
    rows = [
        json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()
    ]
    pools = [r for r in rows if "synthetic/synthetic_guided" in r]
    assert [p["synthetic/synthetic_guided"] for p in pools] == [0.0, 1.0]  # first pool unguided
    assert result["final"]["normalized_return"] is not None
    agent = load_offline_agent(result["checkpoint"])
    assert agent(torch.zeros(1, 11)).shape == (1, 3)
    assert main(["eval", result["checkpoint"], "n_episodes=1", f"out_dir={tmp_path / 'ev'}"]) == 0
    assert (
        main(
            [
                "synth",
                "inspect",
                str(synth_run),
                "trajectories=2",
                "sampler.num_steps=2",
                "sampler.length=8",
                f"policy={result['checkpoint']}",
                "guidance=0.5",
            ]
        )
        == 0
    )
    assert "target log-lik" in capsys.readouterr().out


def test_offline_commands_report_bad_input(medium, synth_run, tmp_path, capsys) -> None:
    assert main(["offline", "configs/none.yaml"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"dataset: {tmp_path / 'missing.hdf5'}\n")
    assert main(["offline", str(bad)]) == 2
    assert "missing.hdf5" in capsys.readouterr().err
    bad.write_text(f"dataset: {medium}\nsynthetic:\n  guidance: 1.0\n")
    assert main(["offline", str(bad)]) == 2
    assert "needs synthetic.model" in capsys.readouterr().err
    assert (
        main(["offline", str(bad), "synthetic.guidance=0", "synthetic.relabel_with_simulator=true"])
        == 2
    )
    assert "relabel_with_simulator needs synthetic.model" in capsys.readouterr().err
    assert main(["synth", "generate", str(synth_run), "guidance=1.0"]) == 2
    assert "needs a target policy" in capsys.readouterr().err
    for override, message in [
        ("sampler.kind=euler", "sampler.kind 'euler'"),
        ("sampler.guide.target=clean", "sampler.guide.target 'clean'"),
        ("sampler.guide.schedule=cosine", "sampler.guide.schedule 'cosine'"),
        ("sampler.guide.delay_steps=-1", "delay_steps must be >= 0"),
        ("sampler.s_churn=-1", "s_churn=-1"),
    ]:
        assert main(["synth", "generate", str(synth_run), override]) == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["synth", "generate", str(synth_run), "device=cuda"]) == 2
        assert "device 'cuda': CUDA is not available" in capsys.readouterr().err
        offline = ["offline", str(bad), "synthetic.guidance=0", f"synthetic.model={synth_run}"]
        assert main([*offline, "synthetic.device=cuda"]) == 2
        assert "synthetic.device 'cuda'" in capsys.readouterr().err
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"source: {tmp_path}\noutput: {tmp_path / 'x.hdf5'}\n")
    assert main(["offline-data", str(cfg)]) == 2


def test_bench_pgd_runs_both_agents_over_the_lambda_grid_and_compares_synthetic_data(
    medium, synth_run, tmp_path
) -> None:
    from robopolicy.bench.pgd import ARMS, Config, Dataset, run

    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text(f"source: unused\noutput: {medium}\n")
    offline_cfg = tmp_path / "offline.yaml"
    offline_cfg.write_text(
        "steps: 10\neval_every: 5\neval_episodes: 1\nfinal_eval_episodes: 1\nnum_threads: 1\n"
        "agent: {hidden_dim: 16, batch_size: 16}\n"
        "synthetic: {trajectories: 4, regenerate_every: 5, sampler: {num_steps: 8, length: 8}}\n"
    )
    dataset = Dataset("tiny", str(data_cfg), "unused", str(offline_cfg), model=str(synth_run))
    results = run(
        Config(
            datasets=[dataset],
            arms=list(ARMS),
            agents=["td3bc", "iql"],
            guidance={"td3bc": [0.5, 2.0], "iql": [0.5, 2.0]},
            seeds=[0, 1],
            check_trajectories=4,
            out_root=str(tmp_path / "b"),
        )
    )
    entry = results["datasets"]["tiny"]
    labels = ["real", "unguided", "guided-lam0.5", "guided-lam2"]
    labels += ["unguided_oracle", "guided_oracle-lam0.5", "guided_oracle-lam2"]
    assert sorted(entry["runs"]) == sorted(
        f"{agent}/{label}/seed{seed}"
        for agent in ("td3bc", "iql")
        for label in labels
        for seed in (0, 1)
    )
    run_ = entry["runs"]["iql/guided-lam2/seed1"]
    assert (run_["agent"], run_["arm"], run_["guidance"], run_["seed"]) == ("iql", "guided", 2.0, 1)
    assert [step for step, _ in run_["curve"]] == [5, 10]
    config = (Path(run_["checkpoint"]) / "config.yaml").read_text()
    assert "algo: iql" in config and "guidance: 2.0" in config
    for agent in ("td3bc", "iql"):
        check = entry["synthetic_check"][agent]
        assert set(check["by_guidance"]) == {"0", "0.5", "2"}
        by = check["by_guidance"]
        assert by["2"]["target_log_likelihood"] > by["0"]["target_log_likelihood"]
    out = next((tmp_path / "b").glob("pgd/*"))
    report = (out / "report.md").read_text()
    assert "guided > both" in report and "### iql" in report and "− unguided" in report
    assert "normalised return per seed" in report and "next-state MSE" in report
    assert (out / "tiny.png").stat().st_size > 0
    with pytest.raises(ValueError, match="subset"):
        run(Config(datasets=[dataset], agents=["sac"], out_root=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="guidance.iql"):
        run(Config(datasets=[dataset], guidance={"td3bc": [1.0]}, out_root=str(tmp_path / "c")))


def test_bench_pgd_scaling_table_trains_each_size_and_budget(medium, tmp_path) -> None:
    from robopolicy.bench.pgd import Config, Dataset, run
    from robopolicy.bench.pgd_scaling import ScalingConfig

    data_cfg = tmp_path / "data.yaml"
    data_cfg.write_text(f"source: unused\noutput: {medium}\n")
    synth_cfg = tmp_path / "synth.yaml"
    synth_cfg.write_text(
        "horizon: 8\nstride: 4\nbatch_size: 8\nwarmup_steps: 100\nnum_threads: 1\n"
        "sampler: {num_steps: 2, length: 8}\n"
    )
    dataset = Dataset("tiny", str(data_cfg), str(synth_cfg), "unused")
    scaling = ScalingConfig(down_dims=[[8, 16], [16, 32]], steps=[2, 3], trajectories=4)
    results = run(
        Config(datasets=[dataset], arms=[], scaling=scaling, out_root=str(tmp_path / "b"))
    )
    table = results["scaling"]
    assert [(r["down_dims"], r["steps"]) for r in table] == [
        ([8, 16], 2),
        ([8, 16], 3),
        ([16, 32], 2),
        ([16, 32], 3),
    ]
    assert table[0]["parameters"] == table[1]["parameters"] < table[2]["parameters"]
    assert all(r["dynamics"]["next_state_mse"] > 0 and r["final_loss"] > 0 for r in table)
    saved = load_trajectory_model(table[3]["run_dir"])[1]["synth"]
    assert (saved["steps"], saved["warmup_steps"], saved["down_dims"]) == (3, 1, [16, 32])
    assert results["datasets"]["tiny"]["runs"] == {}
    out = next((tmp_path / "b").glob("pgd/*"))
    assert not (out / "tiny" / "trajectory_model").exists()  # no arms: no bench model
    report = (out / "report.md").read_text()
    assert "Dynamics error against trajectory-model size" in report and "[16, 32]" in report
    with pytest.raises(ValueError, match="scaling.steps"):
        run(Config(datasets=[dataset], scaling=ScalingConfig(down_dims=[[8, 16]])))


def test_paired_differences_of_the_report() -> None:
    from robopolicy.bench.pgd_report import paired_difference

    def runs(*scores):
        return [{"seed": s, "final_normalized": v} for s, v in enumerate(scores)]

    mean, std, n = paired_difference(runs(10.0, 14.0, 9.0), runs(8.0, 10.0, 9.0))
    assert (mean, n) == (pytest.approx(2.0), 3) and std == pytest.approx(np.std([2, 4, 0]))
    assert paired_difference(runs(1.0), []) is None


def test_mixed_quality_manipulation_dataset_trains_an_offline_agent(tmp_path) -> None:
    out = tmp_path / "lift_mixed.hdf5"
    cfg = OfflineDataConfig(
        kind="scripted_mix",
        env_id="robopolicy/Lift-v0",
        noise_levels=[0.0, 1.5],
        episodes_per_level=2,
        output=str(out),
        reference_episodes=1,
    )
    make_offline_data(cfg)
    data = load_offline_data(out)
    assert data.obs_keys == sorted(data.obs_keys) and len(data.episode_ends) == 4
    assert data.obs.shape[1] == 15 and data.references["expert"] == pytest.approx(1.0)
    # terminal exactly where an episode succeeded (reward 1), else cut by the time limit
    np.testing.assert_array_equal(data.terminals, data.rewards > 0)
    # Lift's state is not recoverable from its observation: no dynamics error, not a wrong one
    assert dynamics_error(data.env_id, data.env_kwargs, data.tensors()) is None
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        relabel_with_simulator(data.env_id, data.env_kwargs, data.tensors())
    off = load_config(
        None,
        OfflineConfig,
        [
            f"dataset={out}",
            f"run_dir={tmp_path / 'off'}",
            "steps=4",
            "eval_every=0",
            "final_eval_episodes=1",
            "num_threads=1",
            "agent.algo=iql",
            "agent.hidden_dim=16",
            "agent.batch_size=8",
        ],
    )
    result = train_offline(off)
    assert 0 <= result["final"]["normalized_return"] <= 100
    assert main(["eval", result["checkpoint"], "n_episodes=1", "video_episodes=0"]) == 0


def _synth_overrides(medium, run_dir, *extra):
    return [
        f"dataset={medium}",
        f"run_dir={run_dir}",
        "horizon=8",
        "stride=4",
        "down_dims=[8,16]",
        "steps=4",
        "batch_size=8",
        "warmup_steps=1",
        "save_every=2",
        "inspect_trajectories=0",
        "num_threads=1",
        *extra,
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_synth_train_on_a_missing_gpu_is_a_config_error(medium, tmp_path) -> None:
    from robopolicy.config import ConfigError

    cfg = load_config(None, SynthConfig, _synth_overrides(medium, tmp_path, "device=cuda"))
    with pytest.raises(ConfigError, match="device 'cuda': CUDA is not available"):
        train_trajectory_model(cfg)
    assert not any(tmp_path.iterdir())  # refused before any run folder


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_synth_trains_resumes_and_samples_on_cuda(medium, tmp_path) -> None:
    extra = ("device=cuda", "inspect_trajectories=4", "sampler.num_steps=4", "sampler.length=8")
    run = train_trajectory_model(
        load_config(None, SynthConfig, _synth_overrides(medium, tmp_path / "a", *extra))
    )
    assert run["inspect"]["dynamics"]["next_state_mse"] > 0
    resumed = train_trajectory_model(
        load_config(
            None,
            SynthConfig,
            [f"resume={tmp_path / 'a' / 'checkpoints' / '0000002'}", f"run_dir={tmp_path / 'b'}"],
        )
    )
    model, config = load_trajectory_model(resumed["checkpoint"])
    assert config["synth"]["device"] == "cuda" and not model.normalizer.mean.is_cuda
    sampler = SamplerConfig(num_steps=4, length=8)
    on_cpu = generate(model, 3, sampler, seed=1)
    on_gpu = generate(model.to("cuda"), 3, sampler, seed=1)
    assert not on_gpu.is_cuda
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-3, rtol=1e-3)
    # the pools of an offline run sampled (and guided by the CPU agent) on the GPU
    overrides = [
        f"dataset={medium}",
        f"run_dir={tmp_path / 'off'}",
        "steps=10",
        "eval_every=0",
        "final_eval_episodes=1",
        "agent.hidden_dim=16",
        "agent.batch_size=16",
        f"synthetic.model={resumed['run_dir']}",
        "synthetic.device=cuda",
        "synthetic.guidance=0.5",
        "synthetic.sampler.guide.target=denoised",
        "synthetic.trajectories=4",
        "synthetic.regenerate_every=5",
        "synthetic.sampler.num_steps=4",
        "synthetic.sampler.length=8",
    ]
    assert train_offline(load_config(None, OfflineConfig, overrides))["final"] is not None


def test_synth_and_offline_training_resume_exactly(medium, tmp_path) -> None:
    from safetensors.torch import load_file

    straight = train_trajectory_model(
        load_config(None, SynthConfig, _synth_overrides(medium, tmp_path / "a"))
    )
    train_trajectory_model(load_config(None, SynthConfig, _synth_overrides(medium, tmp_path / "b")))
    resumed = train_trajectory_model(
        load_config(
            None,
            SynthConfig,
            [f"resume={tmp_path / 'b' / 'checkpoints' / '0000002'}", f"run_dir={tmp_path / 'b2'}"],
        )
    )
    a = load_file(Path(straight["checkpoint"]) / "model.safetensors")
    b = load_file(Path(resumed["checkpoint"]) / "model.safetensors")
    assert resumed["checkpoint"].endswith("0000004") and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def offline(run_dir, *extra):
        overrides = [
            f"dataset={medium}",
            f"run_dir={run_dir}",
            "steps=20",
            "save_every=10",
            "eval_every=0",
            "final_eval_episodes=1",
            "num_threads=1",
            "agent.hidden_dim=16",
            "agent.batch_size=16",
            *extra,
        ]
        return train_offline(load_config(None, OfflineConfig, overrides))

    first = offline(tmp_path / "c")
    offline(tmp_path / "d")
    again = train_offline(
        load_config(
            None,
            OfflineConfig,
            [f"resume={tmp_path / 'd' / 'checkpoints' / '0000010'}", f"run_dir={tmp_path / 'd2'}"],
        )
    )
    a = load_file(Path(first["checkpoint"]) / "model.safetensors")
    b = load_file(Path(again["checkpoint"]) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
