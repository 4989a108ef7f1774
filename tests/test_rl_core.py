"""The off-policy core: n-step replay, critic ensemble, actors, and learning on a tiny task."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robopolicy.checkpoint import load_training_state, save_checkpoint
from robopolicy.rl.agent_config import AgentConfig
from robopolicy.rl.learner import Learner
from robopolicy.rl.networks import CriticEnsemble, GaussianActor, min_of_random_subset
from robopolicy.rl.replay import ReplayBuffer, sample_mixed


def _episode_buffer(rewards, terminated: bool) -> ReplayBuffer:
    """One env; obs[t] = t, next_obs[t] = t + 0.5 so a sample names its transitions."""
    steps = len(rewards)
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=16)
    t = torch.arange(steps, dtype=torch.float32)[:, None]
    buffer.add_episode(t, torch.zeros(steps, 1), torch.tensor(rewards), t + 0.5, terminated)
    return buffer


def _by_start(batch) -> dict[int, tuple[float, float, float]]:
    return {
        int(o): (float(r), float(d), float(n))
        for o, r, d, n in zip(
            batch.obs[:, 0], batch.returns, batch.discount, batch.next_obs[:, 0], strict=True
        )
    }


def test_n_step_returns_on_a_hand_made_episode() -> None:
    buffer = _episode_buffer([1.0, 2.0, 3.0, 4.0], terminated=True)
    rows = _by_start(buffer.sample(400, n_step=3, gamma=0.5))
    assert rows[0] == pytest.approx((1 + 0.5 * 2 + 0.25 * 3, 0.125, 2.5))
    assert rows[1] == pytest.approx((2 + 0.5 * 3 + 0.25 * 4, 0.0, 3.5))  # ends terminated
    assert rows[2] == pytest.approx((3 + 0.5 * 4, 0.0, 3.5))
    assert rows[3] == pytest.approx((4.0, 0.0, 3.5))


def test_truncation_bootstraps_but_termination_does_not() -> None:
    rows = _by_start(_episode_buffer([1.0, 2.0], terminated=False).sample(200, 3, 0.5))
    # cut by the time limit: the sum stops at the end, the target bootstraps from the last s'
    assert rows[0] == pytest.approx((1 + 0.5 * 2, 0.25, 1.5))
    assert rows[1] == pytest.approx((2.0, 0.5, 1.5))


def test_n_step_never_crosses_into_the_next_episode_or_another_env() -> None:
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=40, num_envs=2)
    # env 0: episodes [0, 1] then [2, 3, ...]; env 1 always rewards 100 (must never leak in)
    for t in range(6):
        ended = torch.tensor([t == 1, False])
        buffer.add(
            torch.tensor([[float(t)], [100.0 + t]]),
            torch.zeros(2, 1),
            torch.tensor([1.0, 100.0]),
            torch.tensor([[t + 0.5], [100.5 + t]]),
            ended,
            torch.zeros(2, dtype=torch.bool),
        )
    rows = _by_start(buffer.sample(500, n_step=3, gamma=1.0))
    assert rows[0] == pytest.approx((2.0, 0.0, 1.5))  # stops at the terminal step 1
    assert rows[2] == pytest.approx((3.0, 1.0, 4.5))
    assert rows[5] == pytest.approx((1.0, 1.0, 5.5))  # the newest row: a 1-step target
    assert rows[104] == pytest.approx((200.0, 1.0, 105.5))


def test_ring_buffer_overwrites_oldest_and_round_trips(tmp_path) -> None:
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=4)
    for t in range(7):
        buffer.add(
            torch.tensor([[float(t)]]),
            torch.zeros(1, 1),
            torch.ones(1),
            torch.tensor([[t + 0.5]]),
            torch.zeros(1),
            torch.zeros(1),
        )
    assert len(buffer) == 4
    assert set(_by_start(buffer.sample(200, 1, 0.9))) == {3, 4, 5, 6}
    copy = ReplayBuffer(obs_dim=1, action_dim=1, capacity=4)
    copy.load_state_dict(buffer.state_dict())
    torch.manual_seed(0)
    a = buffer.sample(32, 3, 0.9)
    torch.manual_seed(0)
    b = copy.sample(32, 3, 0.9)
    assert all(torch.equal(x, y) for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True))


def test_resumed_buffer_ends_the_saved_episodes() -> None:
    """After a resume the envs start new episodes: an n-step sum must stop at the last saved
    step (still bootstrapping from it, as a time limit), not add the new episode's rewards."""
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=8)

    def add(t: int, reward: float) -> None:
        obs = torch.tensor([[float(t)]])
        buffer.add(obs, torch.zeros(1, 1), torch.tensor([reward]), obs + 0.5, *torch.zeros(2, 1))

    for t in range(3):
        add(t, 1.0)
    buffer.end_episodes()
    add(3, 100.0)  # the first step of the resumed run's new episode
    rows = _by_start(buffer.sample(300, n_step=3, gamma=1.0))
    assert rows[1] == pytest.approx((2.0, 1.0, 2.5))  # steps 1 and 2, bootstrap from step 2
    assert rows[3] == pytest.approx((100.0, 1.0, 3.5))


def test_sac_keeps_no_target_actor_and_resumes_states_that_had_one() -> None:
    learner = Learner(AgentConfig(algo="sac", hidden_dim=8), obs_dim=3, action_dim=2)
    assert learner.actor_target is None  # its targets sample the online actor
    state = learner.training_state()
    older = {f"actor_target.{k}": v for k, v in learner.actor.state_dict().items()}
    state["learner"] = {**state["learner"], **older}  # as saved before it was dropped
    Learner(AgentConfig(algo="sac", hidden_dim=8), obs_dim=3, action_dim=2).load_training_state(
        state
    )


def test_replay_rejects_non_finite_observations() -> None:
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=4)
    with pytest.raises(ValueError, match="non-finite values in obs"):
        buffer.add(
            torch.tensor([[0.0, math.nan]]),
            torch.zeros(1, 1),
            torch.zeros(1),
            torch.zeros(1, 2),
            torch.zeros(1),
            torch.zeros(1),
        )


def test_mixed_sampling_takes_the_demo_share() -> None:
    online = _episode_buffer([0.0] * 5, terminated=False)
    demos = _episode_buffer([7.0] * 5, terminated=True)
    batch = sample_mixed(online, demos, 64, demo_fraction=0.25, n_step=1, gamma=0.9)
    assert batch.obs.shape == (64, 1)
    assert int((batch.returns == 7.0).sum()) == 16


def test_critic_heads_are_independent_and_subset_min_is_a_min() -> None:
    critic = CriticEnsemble(obs_dim=3, action_dim=2, num_heads=5, hidden_dim=16, num_layers=2)
    q = critic(torch.randn(7, 3), torch.randn(7, 2))
    assert q.shape == (5, 7)
    assert not torch.allclose(q[0], q[1])
    torch.manual_seed(0)
    low = min_of_random_subset(q, 2)
    # the min of one pair of heads, the same pair for the whole batch
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    assert any(torch.equal(low, torch.minimum(q[i], q[j])) for i, j in pairs)
    assert not torch.equal(low, q.min(0).values)  # not the min over all five


def test_gaussian_actor_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    actor = GaussianActor(obs_dim=3, action_dim=2, hidden_dim=16, num_layers=1, scale=2.0)
    obs = torch.randn(4, 3)
    torch.manual_seed(1)
    action, log_prob = actor(obs)
    mean, log_std = actor.net(obs).chunk(2, dim=-1)
    log_std = -5.0 + 0.5 * 7.0 * (torch.tanh(log_std) + 1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(0.0, 2.0)],
    )
    expected = dist.log_prob(action.clamp(-2 + 1e-5, 2 - 1e-5)).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-3)


def _point_mass_return(learner: Learner, starts: torch.Tensor, residual: bool) -> float:
    """x' = x + 0.2 a, reward -x'^2, 10 steps; the base action is 0 (it does nothing)."""
    x, total = starts.clone(), 0.0
    for _ in range(10):
        obs = torch.stack([x, torch.zeros_like(x)], dim=1)
        a = learner.critic_action(obs, learner.act(obs, explore=False)) if residual else 0 * x
        x = x + 0.2 * a.reshape(-1)
        total += float((-(x**2)).mean())
    return total


def _train_on_point_mass(learner: Learner, steps: int) -> None:
    """Online learning on the point mass: 10-step episodes from random starts, UTD 1."""
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=1000)
    x = torch.rand(1) * 2 - 1
    for step in range(steps):
        obs = torch.stack([x, torch.zeros(1)], dim=1)
        executed = learner.critic_action(obs, learner.act(obs, explore=True))
        x_next = x + 0.2 * executed.reshape(-1)
        truncated = torch.tensor([step % 10 == 9])
        next_obs = torch.stack([x_next, torch.zeros(1)], 1)
        buffer.add(obs, executed, -(x_next**2), next_obs, torch.zeros(1), truncated)
        x = torch.rand(1) * 2 - 1 if truncated else x_next
        if step >= 50:
            learner.update(buffer.sample(64, 1, 0.9))


@pytest.mark.parametrize("penalty", [0.0, 0.1])
def test_residual_td3_improves_a_point_mass_in_a_few_hundred_steps(penalty) -> None:
    torch.manual_seed(0)
    cfg = AgentConfig(
        action_penalty=penalty,
        hidden_dim=64,
        critic_heads=4,
        batch_size=64,
        actor_lr=1e-3,
        critic_lr=1e-3,
        zero_init_actor=True,
        n_step=1,
        gamma=0.9,
    )
    learner = Learner(
        cfg, obs_dim=2, action_dim=1, critic_action=lambda obs, r: (obs[:, -1:] + r).clamp(-1, 1)
    )
    starts = torch.linspace(-1, 1, 21)
    before = _point_mass_return(learner, starts, residual=True)
    assert before == pytest.approx(_point_mass_return(learner, starts, residual=False))
    _train_on_point_mass(learner, steps=400)
    after = _point_mass_return(learner, starts, residual=True)
    assert after > before + 0.5 * abs(before)  # at least halves the accumulated cost


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_action_penalty_pulls_actions_to_zero_where_q_does_not_care(algo) -> None:
    obs = torch.randn(256, 3, generator=torch.Generator().manual_seed(1))

    def mean_action_size(penalty: float, updates: int) -> float:
        torch.manual_seed(0)
        cfg = AgentConfig(
            algo=algo,
            hidden_dim=32,
            critic_heads=2,
            actor_lr=1e-2,
            action_penalty=penalty,
            init_alpha=0.01,
        )
        learner = Learner(cfg, obs_dim=3, action_dim=2)
        with torch.no_grad():  # Q ignores the action: only the actor's own terms shape it
            learner.critic.net[0].weight[:, 3:, :] = 0
        for _ in range(updates):
            learner._update_actor(obs)
        with torch.no_grad():
            if algo == "sac":  # the mean action (SAC's entropy term alone also centres it)
                return learner.actor(obs, deterministic=True)[0].abs().mean().item()
            return learner.actor(obs).abs().mean().item()

    before, penalised = mean_action_size(0.5, 0), mean_action_size(0.5, 100)
    assert penalised < 0.1 * before
    assert penalised < 0.5 * mean_action_size(0.0, 100)


def test_sac_learns_the_same_point_mass() -> None:
    torch.manual_seed(0)
    cfg = AgentConfig(
        algo="sac",
        hidden_dim=64,
        critic_heads=2,
        batch_size=64,
        actor_lr=1e-3,
        critic_lr=1e-3,
        n_step=1,
        gamma=0.9,
        init_alpha=0.05,
    )
    learner = Learner(cfg, obs_dim=2, action_dim=1)
    starts = torch.linspace(-1, 1, 21)
    before = _point_mass_return(learner, starts, residual=True)
    _train_on_point_mass(learner, steps=400)
    assert _point_mass_return(learner, starts, residual=True) > before + 0.3 * abs(before)


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_sac_entropy_backup_sets_the_soft_q_fixed_point(backup_entropy) -> None:
    """A self-loop with reward -1 and discount 0.5: Q = (-1 + 0.5 alpha H) / 0.5 with the
    entropy backup (H: the actor's entropy), -2 without, whatever alpha is. On a sparse task
    that ends on success, a positive alpha H per step is what makes long episodes pay."""
    from robopolicy.rl.replay import Batch

    torch.manual_seed(0)
    cfg = AgentConfig(
        algo="sac",
        hidden_dim=32,
        critic_heads=2,
        target_subset=1,
        critic_lr=1e-2,
        init_alpha=1.0,
        backup_entropy=backup_entropy,
    )
    learner = Learner(cfg, obs_dim=1, action_dim=3)
    n = 64
    obs = torch.zeros(n, 1)
    batch = Batch(obs, torch.rand(n, 3) * 2 - 1, -torch.ones(n), obs, torch.full((n,), 0.5))
    for _ in range(400):
        learner._update_critic(batch)
        learner.critic_target.load_state_dict(learner.critic.state_dict())
    with torch.no_grad():
        entropy = -learner.actor(torch.zeros(20000, 1))[1].mean().item()
        q = learner.critic(obs, learner.actor(obs)[0]).mean().item()
    soft, plain = (-1 + 0.5 * learner.alpha.item() * entropy) / 0.5, -2.0
    expected, other = (soft, plain) if backup_entropy else (plain, soft)
    assert abs(soft - plain) > 1.0  # the two fixed points are well apart
    assert abs(q - expected) < abs(q - other) / 3


@pytest.mark.parametrize("bounded", [True, False])
def test_value_bounds_pull_an_overestimating_critic_back_into_range(bounded) -> None:
    """A self-loop with reward -1 and discount 0.99 (true value -100) whose critic starts at
    +50: bootstrapping alone keeps it far above every reachable value for hundreds of steps;
    targets clipped to [-100, 0] bring it down to the range's edge within them (its largest
    head then hovers within a few tenths of 0, so the check leaves that much room)."""
    from robopolicy.rl.replay import Batch

    torch.manual_seed(0)
    cfg = AgentConfig(
        algo="sac",
        hidden_dim=32,
        critic_heads=2,
        critic_lr=1e-2,
        backup_entropy=False,
        value_bounds=[-100.0, 0.0] if bounded else None,
    )
    learner = Learner(cfg, obs_dim=1, action_dim=2)
    for head in (learner.critic, learner.critic_target):
        head.net[-1].bias.data.fill_(50.0)
    n = 64
    obs = torch.zeros(n, 1)
    batch = Batch(obs, torch.rand(n, 2) * 2 - 1, -torch.ones(n), obs, torch.full((n,), 0.99))
    for _ in range(300):
        learner.update(batch, update_actor=False)
    with torch.no_grad():
        q = learner.critic(obs, learner.actor(obs)[0]).max().item()
    assert (q < 1.0) if bounded else (q > 20.0)


@pytest.mark.parametrize(("actor_q", "expected"), [("min", -1.0), ("mean", 0.0)])
def test_sac_actor_maximises_the_heads_reduced_as_configured(actor_q, expected) -> None:
    learner = Learner(AgentConfig(algo="sac", critic_heads=2, actor_q=actor_q), 3, 2)
    last = learner.critic.net[-1]
    last.weight.data.zero_()
    last.bias.data.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1))  # heads disagree by 2
    q = learner._sac_actor_q(torch.randn(5, 3), torch.zeros(5, 2))
    assert torch.allclose(q, torch.full((5,), expected))


def test_unknown_actor_q_is_named() -> None:
    with pytest.raises(ValueError, match="agent.actor_q 'max'"):
        Learner(AgentConfig(algo="sac", actor_q="max"), obs_dim=1, action_dim=1)


def test_unknown_activation_is_named() -> None:
    with pytest.raises(ValueError, match="agent.activation 'gelu'"):
        Learner(AgentConfig(activation="gelu"), obs_dim=1, action_dim=1)


def test_value_bounds_must_be_an_increasing_pair() -> None:
    with pytest.raises(ValueError, match="value_bounds"):
        Learner(AgentConfig(value_bounds=[0.0, -100.0]), obs_dim=1, action_dim=1)


def test_sac_target_entropy_is_in_unit_action_space_whatever_the_scale() -> None:
    """The temperature sees the same entropy gap for a policy scaled by 1 or by 1.5 (DSRL's
    noise bound): the target is set in [-1, 1] units, as DSRL's reference sets it."""
    obs = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))

    def log_alpha_after_one_step(scale: float) -> float:
        torch.manual_seed(0)
        cfg = AgentConfig(algo="sac", hidden_dim=16, critic_heads=2, action_scale=scale)
        cfg.target_entropy, cfg.alpha_lr = 0.0, 0.1
        learner = Learner(cfg, obs_dim=3, action_dim=4)
        learner._update_actor(obs)
        return learner.log_alpha.item()

    start = math.log(AgentConfig().init_alpha)
    unscaled = log_alpha_after_one_step(1.0)
    assert unscaled != pytest.approx(start)  # the step moved it
    assert log_alpha_after_one_step(1.5) == pytest.approx(unscaled, abs=1e-6)


def test_learner_state_round_trips_through_a_checkpoint(tmp_path) -> None:
    cfg = AgentConfig(algo="sac", hidden_dim=16, critic_heads=2, batch_size=8)
    a, b = Learner(cfg, 3, 2), Learner(cfg, 3, 2)
    buffer = ReplayBuffer(3, 2, 16)
    buffer.add_episode(torch.randn(5, 3), torch.rand(5, 2), torch.ones(5), torch.randn(5, 3), True)
    for _ in range(3):
        a.update(buffer.sample(8, 1, 0.9))
    save_checkpoint(tmp_path / "ckpt", {}, {}, step=3, training_state=a.training_state())
    b.load_training_state(load_training_state(tmp_path / "ckpt"))
    torch.manual_seed(3)
    batch = buffer.sample(8, 1, 0.9)
    torch.manual_seed(4)
    a.update(batch)
    torch.manual_seed(4)
    b.update(batch)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_correlated_exploration_keeps_its_std_and_survives_a_checkpoint(tmp_path) -> None:
    """AR(1) noise: lag-1 correlation rho, the same stationary std, restored on resume."""
    cfg = AgentConfig(hidden_dim=8, explore_std=0.1, action_scale=100.0, explore_correlation=0.9)
    learner = Learner(cfg, 3, 2)
    obs = torch.zeros(500, 3)
    mean = learner.act(obs, explore=False)
    draws = torch.stack([(learner.act(obs, explore=True) - mean) / 10.0 for _ in range(40)])
    lag1 = (draws[1:] * draws[:-1]).mean() / draws[:-1].pow(2).mean()
    assert abs(float(lag1) - 0.9) < 0.03 and abs(float(draws[-1].std()) - 1.0) < 0.1
    independent = Learner(AgentConfig(hidden_dim=8, explore_std=0.1, action_scale=100.0), 3, 2)
    base = independent.act(obs, explore=False)
    steps = torch.stack([independent.act(obs, explore=True) - base for _ in range(2)])
    assert abs(float((steps[0] * steps[1]).mean() / steps[0].pow(2).mean())) < 0.1
    save_checkpoint(tmp_path / "c", {}, {}, step=1, training_state=learner.training_state())
    resumed = Learner(cfg, 3, 2)
    resumed.load_training_state(load_training_state(tmp_path / "c"))
    torch.manual_seed(7)
    expected = learner.act(obs, explore=True)
    torch.manual_seed(7)
    assert torch.equal(resumed.act(obs, explore=True), expected)


def test_bad_agent_settings_are_named() -> None:
    with pytest.raises(ValueError, match="target_subset"):
        Learner(AgentConfig(critic_heads=2, target_subset=3), 3, 2)
    with pytest.raises(ValueError, match="algo"):
        Learner(AgentConfig(algo="ppo"), 3, 2)
    with pytest.raises(ValueError, match="explore_correlation"):
        Learner(AgentConfig(explore_correlation=1.0), 3, 2)


def test_eval_history_follows_the_resumed_lineage(tmp_path, capsys) -> None:
    """A killed process evaluated steps past its last checkpoint; the resumed process evaluates
    them again, and its rows are the run's. A line cut short by the kill is skipped."""
    from robopolicy.rl.run_record import eval_history

    def row(step: int, success: float) -> str:
        return json.dumps({"step": step, "eval/success_rate": success, "eval/n_episodes": 4})

    lines = [row(0, 0.0), row(10, 0.25), '{"step": 15, "train/updates": 3}', row(20, 0.5)]
    lines += [row(30, 0.75), '{"step": 35, "eval/succ']  # killed; resumed from step 20
    lines += [row(30, 1.0), row(40, 0.5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    history = eval_history(tmp_path, up_to=40)
    assert [(r["env_steps"], r["success_rate"]) for r in history] == [
        (0, 0.0),
        (10, 0.25),
        (20, 0.5),
        (30, 1.0),
        (40, 0.5),
    ]
    assert history[0] == {"env_steps": 0, "success_rate": 0.0, "n_episodes": 4}
    assert "line 6: not JSON, skipped" in capsys.readouterr().out
    assert [r["env_steps"] for r in eval_history(tmp_path, up_to=20)] == [0, 10, 20]
    assert eval_history(tmp_path / "nothing", up_to=40) == []


def test_a_checkpoint_keeps_the_evals_that_led_to_it(tmp_path) -> None:
    """DSRL's eval steps differ between a killed process and the resumed one (chunks end early
    with episodes): the checkpoint's own history is the run's, whatever metrics.jsonl holds."""
    from robopolicy.rl.run_record import finished_result, saved_history

    history = [{"env_steps": 0, "success_rate": 0.5}, {"env_steps": 2510, "success_rate": 0.75}]
    state = {"counters": {"env_steps": 2600, "seconds": 12.5}, "history": history}
    checkpoint = save_checkpoint(
        tmp_path / "run" / "checkpoints" / "0002600",
        {"w": torch.zeros(1)},
        {},
        step=2600,
        training_state=state,
    )
    rows = [{"step": 2503, "eval/success_rate": 0.0}, {"step": 2510, "eval/success_rate": 0.75}]
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert saved_history(checkpoint) == history
    final_eval = tmp_path / "run" / "eval-0002600" / "eval.json"
    final_eval.parent.mkdir()
    final_eval.write_text(json.dumps({"success_rate": 0.75}))
    result = finished_result(checkpoint)
    assert result["history"] == history and result["final"] == {"success_rate": 0.75}
    assert result["best"] == history[1]
    assert result["minutes"] == pytest.approx(12.5 / 60)


def test_a_log_cut_mid_line_gets_its_next_row_whole(tmp_path) -> None:
    from robopolicy.rl.run_record import eval_history
    from robopolicy.runlog import RunLogger

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "eval/success_rate": 0.5}\n{"step": 5, "ev'
    )
    logger = RunLogger(tmp_path, enabled=True)
    logger.log(10, "eval", {"success_rate": 1.0})
    logger.close()
    assert [r["env_steps"] for r in eval_history(tmp_path, up_to=10)] == [0, 10]
