"""Network parts: shapes, conditioning, gradients, learning, encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robopolicy.nets import ConditionalUnet1D, MLPDenoiser, ObservationEncoder
from robopolicy.nets.encoders import random_crop


@pytest.mark.parametrize("horizon", [8, 16])
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_denoisers_keep_shape_and_use_time_and_condition(kind: str, horizon: int) -> None:
    torch.manual_seed(0)
    if kind == "unet":
        net = ConditionalUnet1D(action_dim=3, cond_dim=5, down_dims=(16, 32, 64), time_embed_dim=16)
    else:
        net = MLPDenoiser(action_dim=3, horizon=horizon, cond_dim=5, hidden_dim=32, num_layers=2)
    x, cond = torch.randn(4, horizon, 3), torch.randn(4, 5)
    out = net(x, torch.tensor([1, 2, 3, 4]), cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, torch.tensor([50, 2, 3, 4]), cond))
    assert not torch.allclose(out, net(x, torch.tensor([1, 2, 3, 4]), cond + 1))
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_rejects_a_bad_horizon_and_learns_a_batch() -> None:
    net = ConditionalUnet1D(action_dim=2, cond_dim=3, down_dims=(16, 32), time_embed_dim=16)
    with pytest.raises(ValueError, match="H=7"):
        net(torch.randn(1, 7, 2), 0, torch.randn(1, 3))
    torch.manual_seed(0)
    x, t, cond, target = (
        torch.randn(8, 8, 2),
        torch.randint(0, 100, (8,)),
        torch.randn(8, 3),
        torch.randn(8, 8, 2),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = (net(x, t, cond) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_random_crop_is_per_sample_in_training_and_central_in_eval() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    centre = random_crop(images, 4, training=False)
    torch.testing.assert_close(centre, images[:, :, 1:5, 1:5])
    torch.manual_seed(0)
    crops = [random_crop(images, 4, training=True) for _ in range(20)]
    assert any(not torch.equal(c, centre) for c in crops)
    for crop in crops:  # each crop is a contiguous window of its own image
        for i in range(2):
            top, left = divmod(int(crop[i, 0, 0, 0].item()) - 36 * i, 6)
            torch.testing.assert_close(crop[i], images[i, :, top : top + 4, left : left + 4])


@pytest.mark.parametrize("encoder", ["conv", "resnet18"])
def test_observation_encoder(encoder: str) -> None:
    torch.manual_seed(0)
    enc = ObservationEncoder(
        {"state": 3},
        {"cam": (32, 32, 3)},
        obs_horizon=2,
        image_encoder=encoder,
        image_feature_dim=8,
        crop_size=28,
    )
    obs = {
        "state": torch.randn(2, 2, 3),
        "cam": torch.randint(0, 255, (2, 2, 32, 32, 3), dtype=torch.uint8),
    }
    out = enc(obs)
    assert out.shape == (2, enc.out_dim) and enc.out_dim == 2 * (3 + 8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    enc.eval()
    torch.testing.assert_close(enc(obs), enc(obs))
    with pytest.raises(KeyError, match="cam"):
        enc({"state": obs["state"]})
    with pytest.raises(ValueError, match="'state' has shape"):
        enc({**obs, "state": torch.randn(2, 3, 3)})
