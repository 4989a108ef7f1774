"""Training state as safetensors + JSON (no pickle): optimiser, LR schedule, EMA, RNG.

``torch.save`` would pickle these; a checkpoint must be loadable without executing code, so
each state is split into its tensors (safetensors) and its plain values (JSON).
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], Any]:
    state = optimizer.state_dict()
    tensors = {
        f"{param_id}.{name}": value
        for param_id, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, state["param_groups"]


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: Any
) -> None:
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param_id, name = key.split(".", 1)
        slots.setdefault(int(param_id), {})[name] = value
    for group in param_groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": param_groups})


def ema_state(ema) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """diffusers ``EMAModel`` -> (shadow parameters, scalar settings)."""
    state = ema.state_dict()
    shadow = {f"{i}": p for i, p in enumerate(state.pop("shadow_params"))}
    return shadow, state


def load_ema_state(ema, shadow: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    params = [shadow[f"{i}"] for i in range(len(shadow))]
    ema.load_state_dict({**settings, "shadow_params": params})


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def load_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])
