"""Checks that need a CUDA device (``pytest -m gpu``); CI has none, so they are deselected by
default and skipped where no GPU is visible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bc_fixtures import tiny_train_config

from robopolicy.checkpoint import load_policy, read_config
from robopolicy.config import load_config
from robopolicy.deploy.client import PolicyClient
from robopolicy.deploy.server import PolicyServer, ServeConfig
from robopolicy.resume import load_run_config
from robopolicy.rl.actors import load_rl_agent
from robopolicy.rl.config import RESUMABLE, FinetuneConfig
from robopolicy.rl.finetune import finetune
from robopolicy.sim.evaluate import evaluate
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
    # and `robopolicy serve device=cuda` answers with it
    latest = {key: value[0, -1] for key, value in obs.items()}
    action = served_action(checkpoint, "cuda", latest)
    assert action.shape == (on_cpu.shapes.action_dim,) and np.isfinite(action).all()


def test_egl_renders_on_the_gpu() -> None:
    env = make_env("robopolicy/Lift-v0", obs_type="state").unwrapped
    env.reset(seed=0)
    image = env.render_camera(env.cameras[0], 84)
    name = env.gl_renderer_name()
    env.close()
    assert image.shape == (84, 84, 3) and image.std() > 1.0
    assert "llvmpipe" not in name.lower() and "softpipe" not in name.lower(), name


def served_action(checkpoint, device: str, obs: dict[str, torch.Tensor]):
    """One action from ``robopolicy serve`` on ``device``, through a real client."""
    server = PolicyServer(ServeConfig(checkpoint=str(checkpoint), port=0, device=device))
    port = server.start_background()
    with PolicyClient(f"ws://127.0.0.1:{port}") as client:
        return client.act({key: value.numpy() for key, value in obs.items()})


@pytest.mark.parametrize(
    ("method", "device", "extra"),
    [  # cuda:N makes N the current device and captures the base's sampler there
        ("dsrl_na", "cuda:0", ["agent.algo=sac", "demo_fraction=0", "agent.action_scale=1.5"]),
        ("residual", "cuda", ["agent.algo=td3", "residual_gripper_by_critic=true"]),
    ],
)
def test_cuda_finetune_learns_on_the_gpu_and_its_checkpoint_runs_on_cpu(
    lift_demos, tmp_path, method, device, extra
) -> None:
    base = tmp_path / "base"
    train_bc(tiny_train_config(lift_demos, base, "optim.steps=10", "loop.save_every=10"))
    cfg = load_config(
        None,
        FinetuneConfig,
        [
            f"method={method}",
            f"base={base}",
            f"run_dir={tmp_path / method}",
            f"device={device}",
            "env_steps=64",
            "warmup_steps=16",
            "critic_warmup_updates=4",
            "eval_every=32",
            "eval_episodes=2",
            "final_eval_episodes=2",
            "save_every=32",
            "video_episodes=0",
            "agent.hidden_dim=16",
            "agent.batch_size=8",
            *extra,
        ],
    )
    result = finetune(cfg)
    assert result["env_steps"] >= 64 and len(result["history"]) >= 2
    checkpoint = result["checkpoint"]
    # resumes on the GPU from its first checkpoint (optimiser state, replayed episodes and the
    # base's planned actions move to the device), branching off: the run holds newer ones
    first = sorted((tmp_path / method / "checkpoints").glob("00*"))[0]
    overrides = [f"resume={first}", f"run_dir={tmp_path / 'branch'}"]
    resumed = finetune(load_run_config(None, FinetuneConfig, overrides, RESUMABLE, "finetune"))
    assert resumed["env_steps"] == result["env_steps"]
    # and the saved actor runs on a machine without one
    agent = load_rl_agent(checkpoint, read_config(checkpoint))
    assert not next(agent.actor.parameters()).is_cuda
    summary = evaluate("robopolicy/Lift-v0", agent, n_episodes=2, seed=0, progress=False)
    assert summary["n_episodes"] == 2
    # or on the GPU, as `robopolicy eval ... device=cuda` and `robopolicy serve` load it
    agent = load_rl_agent(checkpoint, read_config(checkpoint), device)
    assert next(agent.actor.parameters()).is_cuda and agent.policy.device.type == "cuda"
    summary = evaluate("robopolicy/Lift-v0", agent, n_episodes=2, seed=0, progress=False)
    assert summary["n_episodes"] == 2
    env = make_env("robopolicy/Lift-v0", obs_type="state")
    obs, _ = env.reset(seed=0)
    env.close()
    state = {key: torch.as_tensor(value) for key, value in obs.items()}
    action = served_action(checkpoint, device, state)
    assert action.shape == (4,) and np.isfinite(action).all()


@pytest.mark.parametrize(("policy_type", "device"), [("diffusion", "cuda"), ("flow", "cuda:0")])
def test_graphed_decode_matches_the_eager_sampler(
    tmp_path, lift_demos, policy_type, device
) -> None:
    from robopolicy.rl.dsrl import NoiseBase

    run = tmp_path / policy_type
    train_bc(
        tiny_train_config(
            lift_demos, run, "optim.steps=10", "loop.save_every=10", f"policy.type={policy_type}"
        )
    )
    policy = load_policy(run, device=device)
    base = NoiseBase(policy, 2)
    for batch in (2, 2, 2, 5, 2, 2, 5, 5, 5):  # the third call of a size replays a graph
        features = torch.randn(batch, base.feature_dim, device=device)
        noise = torch.randn(batch, base.noise_dim, device=device)
        eager = policy.chunk_from_features(features, base.full_noise(noise))
        graphed = base._chunk_from_features(features, base.full_noise(noise))
        torch.testing.assert_close(graphed, eager)
    assert len(base._chunk_from_features.graphs) == 2  # one graph per batch size
