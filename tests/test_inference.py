"""Execution schemes: RTI warm starts (hand-computed scheduler case), temporal ensembling,
discrete gripper handling, episode resets and network-evaluation counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from bc_fixtures import tiny_obs, tiny_policy

from robopolicy.inference.ensemble import TemporalEnsembleExecutor
from robopolicy.inference.execution import ExecutionConfig, make_executor
from robopolicy.inference.executor import threshold_discrete
from robopolicy.inference.history import ObservationHistories, obs_tensor
from robopolicy.inference.rti import RTIExecutor, shift_warm_start


def cosine_alpha_bar(t: int, num_train_timesteps: int) -> float:
    """squaredcos_cap_v2 (Nichol & Dhariwal) computed by hand: the product of its betas."""

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    product = 1.0
    for i in range(t + 1):
        beta = min(1 - f((i + 1) / num_train_timesteps) / f(i / num_train_timesteps), 0.999)
        product *= 1 - beta
    return product


def test_rti_step_matches_a_hand_computed_ddim_case() -> None:
    """DDIM 5 of 20 train steps (timesteps 16 12 8 4 0), K' = 2, a constant epsilon model: the
    warm start is re-noised to t = 4 with the trained cosine schedule, then stepped 4 -> 0 -> end
    (skipping timesteps correctly, not t -> t-1)."""
    policy = tiny_policy("diffusion").eval()
    eps = 0.3
    policy.denoiser.forward = lambda x, t, c: torch.full_like(x, eps)
    obs, noise = tiny_obs(1), torch.randn(1, 8, 2)
    guess = torch.rand(1, 8, 2) * 2 - 1
    out = policy.predict_chunk(obs, noise, warm_start=guess, start_step=2)

    ab4, ab0 = cosine_alpha_bar(4, 20), cosine_alpha_bar(0, 20)
    x = math.sqrt(ab4) * policy.normalizer.normalize("actions", guess) + math.sqrt(1 - ab4) * noise
    x0 = ((x - math.sqrt(1 - ab4) * eps) / math.sqrt(ab4)).clamp(-1, 1)
    x = math.sqrt(ab0) * x0 + math.sqrt(1 - ab0) * eps  # DDIM eta 0 to t = 0
    x = ((x - math.sqrt(1 - ab0) * eps) / math.sqrt(ab0)).clamp(-1, 1)  # last step: alpha_bar 1
    torch.testing.assert_close(out, policy.normalizer.unnormalize("actions", x))


def test_ddpm_rti_runs_the_last_k_steps_of_the_trained_chain() -> None:
    policy = tiny_policy("diffusion").eval()
    policy.set_sampler("ddpm", 20)
    seen = []
    forward = policy.denoiser.forward
    policy.denoiser.forward = lambda x, t, c: seen.append(int(t[0])) or forward(x, t, c)
    policy.predict_chunk(tiny_obs(2), warm_start=torch.zeros(2, 8, 2), start_step=3)
    assert seen == [2, 1, 0]


def test_shift_repeats_the_last_action_and_clips_the_gripper() -> None:
    chunk = torch.arange(12, dtype=torch.float32).reshape(1, 4, 3) / 12
    chunk[..., 2] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    shifted = shift_warm_start(chunk, discrete_dims=[2], clip=0.1)
    torch.testing.assert_close(shifted[0, :3, :2], chunk[0, 1:, :2])
    torch.testing.assert_close(shifted[0, 3, :2], chunk[0, 3, :2])
    assert shifted[0, :, 2].tolist() == pytest.approx([-0.1, 0.1, -0.1, -0.1])
    # The round trip: clipped in the warm start, thresholded when executed, the command survives.
    executed = threshold_discrete(shifted, [2])[0, :, 2]
    assert executed.tolist() == [-1.0, 1.0, -1.0, -1.0]
    assert chunk[0, 1:, 2].tolist() == executed[:3].tolist()


class RecordingPolicy:
    """Wraps a policy and records each predict_chunk call's keyword arguments and output."""

    def __init__(self, policy) -> None:
        self.policy, self.calls = policy, []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def predict_chunk(self, obs, noise=None, **kwargs):
        chunk = self.policy.predict_chunk(obs, noise, **kwargs)
        self.calls.append((kwargs, chunk))
        return chunk


def test_rti_executor_warm_starts_every_step_and_resets_per_episode() -> None:
    policy = RecordingPolicy(tiny_policy("diffusion", backbone="mlp").eval())
    executor = RTIExecutor(policy, batch_size=2, discrete_dims=[1], start_step=2)
    obs = {"state": torch.randn(2, 3)}
    first = executor.act(obs)
    (kwargs, chunk0) = policy.calls[0]
    assert kwargs == {} and executor.network_evaluations == 2 * 5  # full chain, both rows
    expected = threshold_discrete(chunk0[:, 1], [1])  # obs_horizon - 1 = 1
    torch.testing.assert_close(first, expected)

    second = executor.act(obs)
    kwargs, chunk1 = policy.calls[1]
    assert kwargs["start_step"] == 2
    torch.testing.assert_close(kwargs["warm_start"], shift_warm_start(chunk0, [1], 0.1))
    torch.testing.assert_close(second, threshold_discrete(chunk1[:, 1], [1]))
    assert executor.network_evaluations == 2 * 5 + 2 * 2
    assert executor.evaluations_per_action == pytest.approx(14 / 4)

    executor.reset(torch.tensor([True, False]).numpy())  # env 0 starts a new episode
    executor.act(obs)
    fresh_kwargs, fresh_chunk = policy.calls[2]
    warm_kwargs, _ = policy.calls[3]
    assert fresh_kwargs == {} and fresh_chunk.shape[0] == 1  # env 0: full chain again
    torch.testing.assert_close(warm_kwargs["warm_start"], shift_warm_start(chunk1[1:], [1], 0.1))


def test_rti_cold_start_uses_a_short_ddim_chain_then_restores_the_trained_chain() -> None:
    policy = tiny_policy("diffusion", backbone="mlp").eval()
    policy.set_sampler("ddpm", 5)
    executor = RTIExecutor(policy, batch_size=1, start_step=1, cold_start_steps=2)
    executor.act({"state": torch.randn(1, 3)})
    assert executor.network_evaluations == 2  # the first chunk: DDIM-2
    assert (policy.cfg.sampler, policy.num_inference_steps) == ("ddpm", 5)
    executor.act({"state": torch.randn(1, 3)})
    assert executor.network_evaluations == 2 + 1  # then K' = 1 step of the DDPM-5 chain
    with pytest.raises(ValueError, match="cold_start_steps"):
        RTIExecutor(policy, batch_size=1, cold_start_steps=0)

    flow = tiny_policy("flow", backbone="mlp").eval()  # Euler: one evaluation per step
    executor = RTIExecutor(flow, batch_size=1, start_step=1, cold_start_steps=2)
    executor.act({"state": torch.randn(1, 3)})
    executor.act({"state": torch.randn(1, 3)})
    assert executor.network_evaluations == 2 + 1
    assert flow.num_inference_steps == 5  # the configured chain is back


def test_rti_works_for_flow_with_midpoint_costs() -> None:
    policy = tiny_policy("flow", backbone="mlp", integrator="midpoint").eval()
    executor = RTIExecutor(policy, batch_size=1, start_step=2)
    for _ in range(3):
        action = executor.act({"state": torch.randn(1, 3)})
        assert action.shape == (1, 2) and torch.isfinite(action).all()
    assert executor.network_evaluations == 2 * 5 + 2 * (2 * 2)


class ScriptedPolicy:
    """Returns chunk k filled with the value k (k = 0, 1, ...): ensembles are then checkable."""

    obs_horizon, pred_horizon, action_horizon, action_dim = 1, 3, 1, 1

    def __init__(self) -> None:
        self.k = 0

    def predict_chunk(self, obs, noise=None, **kwargs):
        batch = next(iter(obs.values())).shape[0]
        chunk = torch.full((batch, self.pred_horizon, 1), float(self.k))
        self.k += 1
        return chunk

    def network_evaluations(self, start_step=None) -> int:
        return 10


def test_temporal_ensemble_weights_oldest_first() -> None:
    executor = TemporalEnsembleExecutor(ScriptedPolicy(), batch_size=1, decay=0.5)
    obs = {"state": torch.zeros(1, 1)}
    actions = [float(executor.act(obs)) for _ in range(4)]
    w = [math.exp(-0.5 * k) for k in range(3)]
    assert actions[0] == 0.0
    assert actions[1] == pytest.approx((0 * w[0] + 1 * w[1]) / (w[0] + w[1]))
    # At step 3 the chunks from steps 1, 2, 3 reach "now" (span 3); step 0's has expired.
    assert actions[3] == pytest.approx((1 * w[0] + 2 * w[1] + 3 * w[2]) / sum(w))
    assert executor.evaluations_per_action == 10


def test_execution_config_picks_the_scheme_and_sampler() -> None:
    policy = tiny_policy("diffusion", backbone="mlp")
    rti = make_executor(policy, 2, ExecutionConfig(mode="rti", sampler="ddpm", rti_start_step=3))
    assert isinstance(rti, RTIExecutor) and policy.cfg.sampler == "ddpm"
    chunked = make_executor(policy, 2, ExecutionConfig(action_horizon=1), discrete_dims=[1])
    assert chunked.action_horizon == 1 and chunked.discrete_dims == (1,)
    with pytest.raises(ValueError, match="execution.mode"):
        make_executor(policy, 1, ExecutionConfig(mode="fast"))
    with pytest.raises(ValueError, match="start_step"):
        make_executor(policy, 1, ExecutionConfig(mode="rti", rti_start_step=6))
    with pytest.raises(ValueError, match="action_horizon"):
        make_executor(policy, 1, ExecutionConfig(action_horizon=8))
    with pytest.raises(ValueError, match="discrete action dims"):
        make_executor(policy, 1, ExecutionConfig(), discrete_dims=[2])


def test_a_sampler_that_does_not_fit_the_policy_is_an_error() -> None:
    """A flow policy integrates a velocity: ``execution.sampler=ddpm`` used to be ignored
    silently, and the eval reported under a sampler that never ran."""
    flow = tiny_policy("flow", backbone="mlp")
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match=f"sampler '{sampler}' does not apply to a flow"):
            make_executor(flow, 1, ExecutionConfig(sampler=sampler))
    make_executor(flow, 1, ExecutionConfig(num_inference_steps=3))  # the steps still apply
    assert flow.num_inference_steps == 3
    with pytest.raises(ValueError, match="policy.sampler 'euler' not in"):
        make_executor(tiny_policy("diffusion", backbone="mlp"), 1, ExecutionConfig(sampler="euler"))


def test_observation_histories_pad_new_episodes_and_forget_on_clear() -> None:
    histories = ObservationHistories(horizon=3, batch_size=2)
    histories.push(0, {"x": torch.tensor([1.0])})
    histories.push(1, {"x": torch.tensor([5.0])})
    histories.push(0, {"x": torch.tensor([2.0])})
    batch = histories.stacked([0, 1])
    assert batch["x"].shape == (2, 3, 1)
    assert batch["x"][:, :, 0].tolist() == [[1.0, 1.0, 2.0], [5.0, 5.0, 5.0]]
    histories.clear(0)
    histories.push(0, {"x": torch.tensor([7.0])})
    assert histories.stacked([0])["x"][0, :, 0].tolist() == [7.0, 7.0, 7.0]


def test_obs_tensor_keeps_images_as_bytes() -> None:
    assert obs_tensor(np.zeros((2, 2), dtype=np.uint8)).dtype == torch.uint8
    assert obs_tensor(np.zeros(3, dtype=np.float64)).dtype == torch.float32
