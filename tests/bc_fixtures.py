"""Tiny BC set-ups shared by the policy, checkpoint and training tests."""

from __future__ import annotations

import torch

from robopolicy.data.normalizer import Normalizer
from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy

TINY = dict(
    obs_horizon=2,
    pred_horizon=8,
    action_horizon=4,
    num_inference_steps=5,
    num_train_timesteps=20,
    down_dims=[16, 32],
    mlp_hidden_dim=32,
    mlp_num_layers=2,
    time_embed_dim=16,
)
SHAPES = PolicyShapes(obs={"state": [3]}, action_dim=2, control_hz=10.0)


def tiny_policy(policy_type: str = "diffusion", backbone: str = "unet", **overrides):
    torch.manual_seed(0)
    cfg = PolicyConfig(type=policy_type, backbone=backbone, **{**TINY, **overrides})
    normalizer = Normalizer.fit(
        {"state": torch.randn(100, 3) * 2 + 1, "actions": torch.rand(100, 2) * 4 - 2}
    )
    return make_policy(cfg, SHAPES, normalizer)


def tiny_obs(batch: int = 3, horizon: int = 2) -> dict[str, torch.Tensor]:
    return {"state": torch.randn(batch, horizon, 3)}
