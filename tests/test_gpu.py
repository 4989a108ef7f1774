"""Checks that need a CUDA device (``pytest -m gpu``); CI has none, so they are deselected by
default and skipped where no GPU is visible."""

from __future__ import annotations

import pytest
import torch
from bc_fixtures import tiny_train_config

from robopolicy.checkpoint import load_policy
from robopolicy.sim.vector import make_env
from robopolicy.training.bc import train_bc

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_training_gives_a_checkpoint_that_runs_the_same_on_cpu(
    lift_demos, tmp_path, monkeypatch
) -> None:
    # cuDNN may run the U-Net's convolutions in TF32 (10-bit mantissa): compare at full precision
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = tiny_train_config(lift_demos, tmp_path, "optim.steps=20", "optim.device=cuda")
    checkpoint = train_bc(cfg)["checkpoint"]
    on_cpu = load_policy(checkpoint).eval()
    on_gpu = load_policy(checkpoint).to("cuda").eval()
    assert next(on_gpu.parameters()).is_cuda
    obs = {
        key: torch.randn(2, on_cpu.obs_horizon, *shape) for key, shape in on_cpu.shapes.obs.items()
    }
    noise = torch.randn(2, on_cpu.pred_horizon, on_cpu.shapes.action_dim)
    cpu_chunk = on_cpu.predict_chunk(obs, noise=noise)
    gpu_chunk = on_gpu.predict_chunk(
        {k: v.cuda() for k, v in obs.items()}, noise=noise.cuda()
    ).cpu()
    torch.testing.assert_close(gpu_chunk, cpu_chunk, rtol=1e-3, atol=1e-3)


def test_egl_renders_on_the_gpu() -> None:
    env = make_env("robopolicy/Lift-v0", obs_type="state").unwrapped
    env.reset(seed=0)
    image = env.render_camera(env.cameras[0], 84)
    name = env.gl_renderer_name()
    env.close()
    assert image.shape == (84, 84, 3) and image.std() > 1.0
    assert "llvmpipe" not in name.lower() and "softpipe" not in name.lower(), name
