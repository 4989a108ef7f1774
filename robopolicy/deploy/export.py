"""``robopolicy export CHECKPOINT OUT``: a self-contained directory to deploy.

    OUT/
      config.yaml, model.safetensors, normalizer.safetensors, meta.json   the checkpoint itself
      deploy.json      what a controller needs: observation keys/shapes/dtypes, action dim and
                       meaning, discrete dims, horizons, control Hz, sampler, ONNX I/O names
      policy.onnx      observation history + initial noise -> unnormalised action chunk: the
                       encoder, the whole sampler chain (unrolled) and the normaliser in one graph

The ONNX graph is the same function as ``predict_chunk(obs, noise)`` (DDIM with eta 0 and flow
are deterministic given the noise), so onnxruntime can replace torch on the robot computer.
Exporting a DDPM sampler is refused: its steps draw fresh noise inside the chain.
``OUT`` is written next to itself and renamed into place (atomic).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from robopolicy.checkpoint import (
    CheckpointError,
    load_policy,
    read_config,
    read_meta,
    resolve_checkpoint,
)
from robopolicy.files import atomic_write_json

CHECKPOINT_FILES = ("config.yaml", "model.safetensors", "normalizer.safetensors", "meta.json")
ONNX_OPSET = 17


class ChunkGraph(nn.Module):
    """``predict_chunk`` with positional inputs (observations in a fixed key order, then noise)."""

    def __init__(self, policy, obs_keys: list[str]) -> None:
        super().__init__()
        self.policy, self.obs_keys = policy, obs_keys

    def forward(self, *inputs: Tensor) -> Tensor:
        obs = dict(zip(self.obs_keys, inputs[:-1], strict=True))
        return self.policy.predict_chunk(obs, inputs[-1])


def deploy_metadata(checkpoint: str | Path) -> dict[str, Any]:
    """What a client must know to talk to this policy (also sent by the server on connect)."""
    path = resolve_checkpoint(checkpoint)
    config = read_config(path)
    policy_cfg, shapes, task = config["policy"], config["shapes"], config.get("task", {})
    env = gym.make(task["env_id"], **dict(task.get("env_kwargs") or {}))
    try:
        unwrapped = env.unwrapped
        action_meaning = list(getattr(unwrapped, "action_meaning", ()))
        discrete = list(getattr(unwrapped, "discrete_action_dims", ()))
        obs_dtypes = {k: env.observation_space[k].dtype.name for k in shapes["obs"]}
    finally:
        env.close()
    return {
        "env_id": task["env_id"],
        "env_kwargs": dict(task.get("env_kwargs") or {}),
        "policy_type": policy_cfg["type"],
        "backbone": policy_cfg["backbone"],
        "observations": {
            k: {"shape": list(v), "dtype": obs_dtypes[k]} for k, v in shapes["obs"].items()
        },
        "action_dim": shapes["action_dim"],
        "action_meaning": action_meaning,
        "discrete_action_dims": discrete,
        "obs_horizon": policy_cfg["obs_horizon"],
        "pred_horizon": policy_cfg["pred_horizon"],
        "action_horizon": policy_cfg["action_horizon"],
        "control_hz": shapes["control_hz"],
        "sampler": "flow" if policy_cfg["type"] == "flow" else policy_cfg["sampler"],
        "num_inference_steps": policy_cfg["num_inference_steps"],
        "step": read_meta(path)["step"],
    }


def example_inputs(policy, batch: int = 1, seed: int = 0) -> tuple[dict[str, Tensor], Tensor]:
    """Random observations (B, T_obs, ...) of the right shapes and dtypes, and noise."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, shape in policy.shapes.obs.items():
        full = (batch, policy.obs_horizon, *shape)
        obs[key] = (
            torch.randint(0, 256, full, generator=g, dtype=torch.uint8)
            if len(shape) == 3
            else torch.randn(full, generator=g)
        )
    noise = torch.randn((batch, policy.pred_horizon, policy.action_dim), generator=g)
    return obs, noise


def export_onnx(policy, path: Path) -> dict[str, Any]:
    """Write ``policy.onnx`` and check it against torch on fresh inputs; return its I/O spec."""
    import onnxruntime as ort

    if policy.cfg.type == "diffusion" and policy.cfg.sampler != "ddim":
        raise ValueError(
            f"ONNX export needs a deterministic sampler; this checkpoint samples with "
            f"{policy.cfg.sampler!r} (re-export with sampler=ddim)"
        )
    obs_keys = sorted(policy.shapes.obs)
    obs, noise = example_inputs(policy, batch=2)
    inputs = (*[obs[k] for k in obs_keys], noise)
    names = [*obs_keys, "noise"]
    dynamic = {name: {0: "batch"} for name in names} | {"actions": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks become constants in the trace (the shapes are fixed by deploy.json),
        # and the TorchScript exporter announces its deprecation: neither is actionable.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            ChunkGraph(policy, obs_keys).eval(),  # eval: centre crop, no dropout
            inputs,
            str(path),
            input_names=names,
            output_names=["actions"],
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter unrolls the sampler loop into one graph
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_obs, check_noise = example_inputs(policy, batch=3, seed=1)
    feed = {k: check_obs[k].numpy() for k in obs_keys} | {"noise": check_noise.numpy()}
    (onnx_actions,) = session.run(["actions"], feed)
    torch_actions = policy.predict_chunk(check_obs, check_noise).numpy()
    max_abs = float(np.abs(onnx_actions - torch_actions).max())
    return {"file": path.name, "inputs": names, "output": "actions", "max_abs_diff": max_abs}


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, onnx: bool = True, pick: str = "last"
) -> dict:
    """Copy the checkpoint (``pick``: a run's last or best), write ``deploy.json`` and
    (optionally) ``policy.onnx`` into ``out``."""
    source = resolve_checkpoint(checkpoint, pick)
    _check_exportable(source)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"export: {out} already exists; choose a new directory")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in CHECKPOINT_FILES:
            shutil.copy2(source / name, tmp / name)
        metadata = deploy_metadata(source)
        rl = read_config(source).get("rl")
        if rl is not None:  # EXPO: base + edit + critic, served as they are
            metadata["rl"] = {"method": rl["method"], "step": metadata["step"]}
        if onnx and rl is None:
            policy = load_policy(source)
            metadata["onnx"] = export_onnx(policy, tmp / "policy.onnx")
        atomic_write_json(tmp / "deploy.json", metadata)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**metadata, "out": str(out), "source": str(source)}


def _check_exportable(source: Path) -> None:
    """Export writes one policy: a BC policy (with the ONNX graph of its sampler chain), or an
    EXPO checkpoint, which carries its own trained base (no ONNX graph: its on-the-fly choice
    runs the edit policy and the critic too). Other RL checkpoints are a frozen base named by
    path plus an agent, served as they are by ``robopolicy serve``."""
    config = read_config(source)
    if "policy" in config:
        return
    if "rl" in config:
        rl = config["rl"]
        raise CheckpointError(
            f"{source} is an RL checkpoint ({rl.get('method')} on the base policy "
            f"{rl.get('base')}); export writes one BC policy: serve the RL checkpoint as it is "
            f"with `robopolicy serve {source}`, or export its base policy"
        )
    raise CheckpointError(f"{source} is not a BC policy checkpoint: config.yaml has no 'policy'")


def read_deploy_metadata(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "deploy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} an exported policy?")
    return json.loads(path.read_text())
