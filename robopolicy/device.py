"""Which torch device a run uses: one rule for training, RL fine-tuning and the tools."""

from __future__ import annotations

import torch

from robopolicy.config import ConfigError


def resolve_device(device: str, key: str = "device") -> torch.device:
    """``device`` as a torch device (``auto``: CUDA when visible, else the CPU), or a clear
    error, naming the config ``key``, for a name torch does not know or a GPU this machine lacks."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(
            f"{key} {device!r} is not a torch device (auto, cpu, cuda, cuda:N)"
        ) from err
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key} {device!r}: only auto, cpu and cuda are supported")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} {device!r}: CUDA is not available on this machine (use cpu)")
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"{key} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return parsed
