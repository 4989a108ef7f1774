"""Network parts: denoiser shapes and conditioning, gradients, overfitting, observation encoders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.nets import (
    ConditionalUnet1D,
    MLPDenoiser,
    ObservationEncoder,
    SinusoidalTimeEmbedding,
    mlp,
)
from robopolicy.nets.encoders import random_crop

ACTION_DIM, COND_DIM = 3, 5


def tiny_unet(horizon: int) -> nn.Module:
    del horizon  # the U-Net takes any H divisible by 4 (three levels)
    return ConditionalUnet1D(
        ACTION_DIM, COND_DIM, down_dims=(8, 16, 32), n_groups=4, time_embed_dim=8
    )


def tiny_mlp(horizon: int) -> nn.Module:
    return MLPDenoiser(ACTION_DIM, horizon, COND_DIM, hidden_dim=32, num_layers=2, time_embed_dim=8)


DENOISERS = [tiny_unet, tiny_mlp]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("make", DENOISERS)
@pytest.mark.parametrize("horizon", [8, 16])
def test_denoiser_shape_and_conditioning(make, horizon: int) -> None:
    net = make(horizon)
    sample, cond = torch.randn(4, horizon, ACTION_DIM), torch.randn(4, COND_DIM)
    t = torch.full((4,), 10.0)
    out = net(sample, t, cond)
    assert out.shape == sample.shape
    assert not torch.allclose(out, net(sample, t + 500, cond))
    assert not torch.allclose(out, net(sample, t, torch.randn(4, COND_DIM)))
    # A scalar timestep means the same time for the whole batch.
    torch.testing.assert_close(net(sample, 10, cond), out)


@pytest.mark.parametrize("make", DENOISERS)
def test_denoiser_gradients_reach_every_parameter(make) -> None:
    net = make(8)
    out = net(torch.randn(4, 8, ACTION_DIM), torch.randint(0, 1000, (4,)), torch.randn(4, COND_DIM))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_unet_rejects_a_horizon_it_cannot_halve() -> None:
    net = ConditionalUnet1D(ACTION_DIM, COND_DIM, down_dims=(8, 16, 32), n_groups=4)
    with pytest.raises(ValueError, match="H=6"):
        net(torch.randn(2, 6, ACTION_DIM), 0, torch.randn(2, COND_DIM))


def test_tiny_unet_overfits_a_fixed_batch() -> None:
    net = tiny_unet(8)
    sample, cond = torch.randn(8, 8, ACTION_DIM), torch.randn(8, COND_DIM)
    t, target = torch.randint(0, 1000, (8,)), torch.randn(8, 8, ACTION_DIM)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(sample, t, cond) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_time_embedding_shape_and_distinct_times() -> None:
    embed = SinusoidalTimeEmbedding(16)
    steps = embed(torch.arange(1000))
    assert steps.shape == (1000, 16)
    assert torch.cdist(steps, steps).add(torch.eye(1000) * 1e3).min() > 1e-3
    flow = embed(torch.tensor([0.0, 0.001, 0.5, 1.0]) * 1000)  # flow callers pass t * 1000
    assert torch.cdist(flow, flow).add(torch.eye(4) * 1e3).min() > 1e-3


def test_mlp_builder_layout() -> None:
    net = mlp(4, [8, 8], 1, layer_norm=True, activation=nn.SiLU)
    assert [type(m) for m in net] == [nn.Linear, nn.LayerNorm, nn.SiLU] * 2 + [nn.Linear]
    assert net(torch.randn(2, 4)).shape == (2, 1)


def images(batch: int = 2, steps: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (batch, steps, size, size, 3), dtype=torch.uint8)


def test_low_dim_only_encoder_concatenates_sorted_keys_per_step() -> None:
    enc = ObservationEncoder({"b": 2, "a": 1}, {}, obs_horizon=2)
    a, b = torch.randn(3, 2, 1), torch.randn(3, 2, 2)
    out = enc({"b": b, "a": a, "unused": torch.zeros(1)})
    assert out.shape == (3, enc.out_dim) and enc.out_dim == 6
    torch.testing.assert_close(out, torch.cat([a, b], dim=-1).flatten(1))


# ResNet-18 downsamples 32x: a 56-pixel crop leaves the 2x2 map spatial softmax needs.
@pytest.mark.parametrize(("kind", "size", "crop"), [("conv", 32, 28), ("resnet18", 64, 56)])
def test_image_encoder_shapes_and_crop_modes(kind: str, size: int, crop: int) -> None:
    enc = ObservationEncoder(
        {"pos": 3},
        {"cam": (size, size, 3)},
        2,
        image_encoder=kind,
        image_feature_dim=16,
        crop_size=crop,
    )
    obs = {"pos": torch.randn(2, 2, 3), "cam": images(size=size)}
    out = enc(obs)
    assert out.shape == (2, enc.out_dim) and enc.out_dim == 2 * (3 + 16)
    enc.eval()
    torch.testing.assert_close(enc(obs), enc(obs), rtol=0, atol=0)
    enc.train()
    assert not torch.allclose(enc(obs), enc(obs))


def test_resnet18_encoder_has_groupnorm_only_and_rejects_a_1x1_feature_map() -> None:
    enc = ObservationEncoder({}, {"cam": (40, 40, 3)}, 1, image_encoder="resnet18", crop_size=36)
    kinds = {type(m) for m in enc.modules()}
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert nn.GroupNorm in kinds
    with pytest.raises(ValueError, match="28x28"):
        ObservationEncoder({}, {"cam": (32, 32, 3)}, 1, image_encoder="resnet18", crop_size=28)


def test_resnet18_encoder_round_trips_through_safetensors(tmp_path) -> None:
    """Checkpoints are safetensors, which refuses tensors stored under two names."""

    def build() -> ObservationEncoder:
        return ObservationEncoder(
            {}, {"cam": (40, 40, 3)}, 1, image_encoder="resnet18", crop_size=36
        )

    torch.manual_seed(0)
    enc = build().eval()
    save_file(enc.state_dict(), tmp_path / "enc.safetensors")
    restored = build().eval()
    restored.load_state_dict(load_file(tmp_path / "enc.safetensors"), strict=True)
    obs = {"cam": images(size=40, steps=1)}
    torch.testing.assert_close(restored(obs), enc(obs), rtol=0, atol=0)


def test_cameras_have_own_or_shared_weights() -> None:
    cams = {"left": (16, 16, 3), "right": (16, 16, 3)}
    own = ObservationEncoder({}, cams, 1, image_encoder="conv", crop_size=12)
    shared = ObservationEncoder(
        {}, cams, 1, image_encoder="conv", crop_size=12, share_image_encoder=True
    )
    assert sum(p.numel() for p in own.parameters()) == 2 * sum(
        p.numel() for p in shared.parameters()
    )
    obs = {"left": images(1, 1, 16), "right": images(1, 1, 16)}
    assert shared.eval()(obs).shape == (1, shared.out_dim) == (1, 128)


def test_random_crop_offsets_differ_per_sample_and_centre_in_eval() -> None:
    grid = torch.arange(100.0).reshape(1, 1, 10, 10).expand(64, 2, 10, 10)
    crops = random_crop(grid, 4, training=True)
    assert crops.shape == (64, 2, 4, 4)
    assert len({crop[0, 0, 0].item() for crop in crops}) > 1
    # Each crop is a contiguous window of the grid, equal across channels.
    top_left = crops[:, 0, 0, 0]
    expected = top_left[:, None, None] + 10 * torch.arange(4)[:, None] + torch.arange(4)
    torch.testing.assert_close(crops[:, 1], expected)
    centre = random_crop(grid, 4, training=False)
    torch.testing.assert_close(centre[0, 0, 0, 0], torch.tensor(33.0))


def test_missing_key_and_wrong_shape_name_the_key() -> None:
    enc = ObservationEncoder({"pos": 3}, {"cam": (16, 16, 3)}, 2, image_encoder="conv")
    with pytest.raises(KeyError, match="'cam'"):
        enc({"pos": torch.randn(1, 2, 3)})
    with pytest.raises(ValueError, match=r"'pos' has shape \(1, 2, 4\); expected \(B, 2, 3\)"):
        enc({"pos": torch.randn(1, 2, 4), "cam": images(1, 2, 16)})
    with pytest.raises(ValueError, match="'cam'"):
        enc({"pos": torch.randn(1, 2, 3), "cam": images(1, 1, 16)})
