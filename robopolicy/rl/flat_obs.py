"""Observations as the actor and critic see them: one flat float32 vector per env.

Its own module because both the MDPs (``rl/mdp.py``) and the rollout agents (``rl/actors.py``)
flatten observations, and the agents also load DSRL, which builds on the MDPs: keeping the helper
below both leaves the import graph without a circle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def flatten_obs(obs, keys: list[str] | None) -> Tensor:
    """A vector env's observation batch as (N, D) float32: dict keys in order, or a Box."""
    if keys is None:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    return torch.cat([torch.as_tensor(obs[k], dtype=torch.float32).flatten(1) for k in keys], dim=1)
