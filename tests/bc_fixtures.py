"""Tiny BC set-ups shared by the policy, checkpoint and training tests."""

from __future__ import annotations

from pathlib import Path

import torch

from robopolicy.config import load_config
from robopolicy.data.normalizer import Normalizer
from robopolicy.policies import PolicyConfig, PolicyShapes, make_policy
from robopolicy.training.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent

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


# A Lift diffusion run small enough to train in seconds (tests of training, RTI, residual RL).
TINY_TRAIN_OVERRIDES = [
    "policy.pred_horizon=8",
    "policy.action_horizon=4",
    "policy.num_inference_steps=4",
    "policy.num_train_timesteps=20",
    "policy.down_dims=[16,32]",
    "policy.time_embed_dim=16",
    "optim.batch_size=16",
    "optim.warmup_steps=5",
    "optim.num_threads=1",
    "loop.log_every=5",
    "loop.final_eval_episodes=0",
]


def tiny_train_config(dataset: str, run_dir: Path, *extra: str) -> TrainConfig:
    overrides = [f"task.dataset={dataset}", f"run_dir={run_dir}", *TINY_TRAIN_OVERRIDES, *extra]
    return load_config(REPO / "configs/train/lift_diffusion.yaml", TrainConfig, overrides)
