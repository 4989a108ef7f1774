"""The policy API: shapes, determinism given the noise, warm starts, the action queue, errors."""

from __future__ import annotations

import pytest
import torch
from bc_fixtures import tiny_obs, tiny_policy

VARIANTS = [
    ("diffusion", "unet", {}),
    ("diffusion", "mlp", {}),
    ("diffusion", "unet", {"sampler": "ddpm"}),
    ("diffusion", "mlp", {"prediction_type": "sample"}),
    ("flow", "unet", {}),
    ("flow", "mlp", {"integrator": "midpoint"}),
]


@pytest.mark.parametrize(("policy_type", "backbone", "extra"), VARIANTS)
def test_chunk_shape_loss_and_bounds(policy_type, backbone, extra) -> None:
    policy = tiny_policy(policy_type, backbone, **extra)
    obs = tiny_obs()
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (3, 8, 2)
    # Samples are clipped to the normalised range [-1, 1], i.e. the data's action limits.
    low = policy.normalizer.unnormalize("actions", -torch.ones(2))
    high = policy.normalizer.unnormalize("actions", torch.ones(2))
    assert torch.all(chunk >= low - 1e-5) and torch.all(chunk <= high + 1e-5)
    loss = policy.compute_loss({"obs": obs, "actions": torch.rand(3, 8, 2)})
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("policy_type", ["diffusion", "flow"])
def test_same_noise_same_chunk(policy_type) -> None:
    """DSRL relies on this: DDIM (eta 0) and flow sampling are deterministic given the noise."""
    policy = tiny_policy(policy_type).eval()
    obs, noise = tiny_obs(), torch.randn(3, 8, 2)
    a = policy.predict_chunk(obs, noise)
    torch.manual_seed(123)  # the global RNG must not matter
    b = policy.predict_chunk(obs, noise)
    c = policy.predict_chunk(obs, torch.randn(3, 8, 2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_ddim_warm_start_renoises_with_the_trained_schedule() -> None:
    """The warm start is noised to the first remaining DDIM step (not fed clean) and only
    ``start_step`` network evaluations run."""
    policy = tiny_policy("diffusion").eval()
    calls = []
    denoiser_forward = policy.denoiser.forward

    def counting_forward(sample, timestep, cond):
        calls.append((sample.clone(), timestep.clone()))
        return denoiser_forward(sample, timestep, cond)

    policy.denoiser.forward = counting_forward
    obs, noise = tiny_obs(), torch.randn(3, 8, 2)
    guess = torch.rand(3, 8, 2)
    policy.predict_chunk(obs, noise, warm_start=guess, start_step=2)
    timesteps = policy.sampler_timesteps()
    assert len(calls) == 2
    assert torch.all(calls[0][1] == timesteps[-2]) and torch.all(calls[1][1] == timesteps[-1])
    alpha_bar = policy.train_scheduler.alphas_cumprod[timesteps[-2]]
    expected = (
        alpha_bar.sqrt() * policy.normalizer.normalize("actions", guess)
        + (1 - alpha_bar).sqrt() * noise
    )
    torch.testing.assert_close(calls[0][0], expected)


def test_flow_warm_start_starts_on_the_path() -> None:
    policy = tiny_policy("flow").eval()
    seen = []
    forward = policy.denoiser.forward
    policy.denoiser.forward = lambda x, t, c: (
        seen.append((x.clone(), t.clone())) or forward(x, t, c)
    )
    obs, noise, guess = tiny_obs(), torch.randn(3, 8, 2), torch.rand(3, 8, 2)
    policy.predict_chunk(obs, noise, warm_start=guess, start_step=2)
    assert len(seen) == 2
    t0 = 2 / policy.num_inference_steps
    x0 = policy.normalizer.normalize("actions", guess)
    torch.testing.assert_close(seen[0][0], (1 - t0) * x0 + t0 * noise)
    torch.testing.assert_close(seen[0][1], torch.full((3,), t0 * 1000.0))


def test_select_action_executes_the_chunk_then_replans() -> None:
    policy = tiny_policy("diffusion").eval()
    chunks = []
    predict = policy.predict_chunk

    def recording_predict(obs, *args, **kwargs):
        chunks.append((obs, predict(obs, *args, **kwargs)))
        return chunks[-1][1]

    policy.predict_chunk = recording_predict
    observations = [{"state": torch.full((2, 3), float(t))} for t in range(6)]
    actions = [policy.select_action(o) for o in observations]
    assert len(chunks) == 2  # planned at t=0 and t=4 (action_horizon 4)
    first_obs, first_chunk = chunks[0]
    torch.testing.assert_close(first_obs["state"][:, 0], first_obs["state"][:, 1])  # padded
    for t in range(4):
        torch.testing.assert_close(actions[t], first_chunk[:, 1 + t])  # obs_horizon - 1 = 1
    second_obs, second_chunk = chunks[1]
    assert second_obs["state"][0, :, 0].tolist() == [3.0, 4.0]  # the last two observations
    torch.testing.assert_close(actions[4], second_chunk[:, 1])
    policy.reset()
    policy.select_action(observations[0])
    assert len(chunks) == 3


def test_bad_inputs_name_the_problem() -> None:
    policy = tiny_policy("diffusion")
    with pytest.raises(KeyError, match="state"):
        policy.predict_chunk({"other": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="'state' has shape"):
        policy.predict_chunk({"state": torch.zeros(1, 2, 4)})
    with pytest.raises(ValueError, match="obs_horizon"):
        policy.predict_chunk({"state": torch.zeros(1, 3, 3)})
    with pytest.raises(ValueError, match="noise has shape"):
        policy.predict_chunk(tiny_obs(1), torch.zeros(1, 7, 2))
    with pytest.raises(ValueError, match="start_step"):
        policy.predict_chunk(tiny_obs(1), warm_start=torch.zeros(1, 8, 2), start_step=9)
    with pytest.raises(ValueError, match="pred_horizon"):
        tiny_policy("diffusion", action_horizon=8)
    with pytest.raises(ValueError, match="policy.type"):
        tiny_policy("gan")
