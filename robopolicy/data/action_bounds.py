"""Dataset actions checked against the env's action bounds, before any training starts.

One outlier (say a 1e30 from a logging glitch) sets a min/max normaliser's range and squashes
every real action to about zero: the run trains without complaint and learns nothing. So every
action of the demos in use is compared with the bounds of the env's ``Box`` action space, and
the first report names the file, the demo, the step and the dimension of the worst value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from robopolicy.data.hdf5 import iter_actions

TOLERANCE = 1e-6
"""How far past a bound a value may lie and still count as inside (float32 round-off)."""


@dataclass(frozen=True)
class OutOfBoundsActions:
    """The action values of a dataset that lie outside ``[low, high]``: how many, how many of
    them are NaN or infinite (those cannot be clipped), and the worst one."""

    path: str
    count: int
    nonfinite: int
    total: int
    demo: str
    step: int
    dim: int
    value: float
    low: float
    high: float

    def describe(self) -> str:
        return (
            f"{self.path}: {self.count} of {self.total} action values lie outside the env's "
            f"action bounds ({self.nonfinite} of them NaN or infinite); the worst is "
            f"data/{self.demo}/actions[{self.step}, {self.dim}] = {self.value:g}, outside "
            f"[{self.low:g}, {self.high:g}]"
        )


def find_out_of_bounds_actions(
    path: str | os.PathLike[str],
    low: np.ndarray,
    high: np.ndarray,
    filter_key: str | None = None,
) -> OutOfBoundsActions | None:
    """Scan the actions of ``path``'s demos (``filter_key``'s only, if given) against the
    per-dimension bounds ``low`` and ``high``; None when every value lies inside."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    count = nonfinite = total = 0
    worst: tuple[float, str, int, int, float] | None = None
    for name, stored in iter_actions(path, filter_key):
        actions = stored.astype(np.float64)
        with np.errstate(invalid="ignore"):
            excess = np.maximum(low - actions, actions - high)
        excess[~np.isfinite(actions)] = np.inf
        outside = excess > TOLERANCE
        count += int(outside.sum())
        nonfinite += int((~np.isfinite(actions)).sum())
        total += actions.size
        if outside.any():
            step, dim = np.unravel_index(int(np.argmax(excess)), actions.shape)
            if worst is None or excess[step, dim] > worst[0]:
                worst = (excess[step, dim], name, int(step), int(dim), actions[step, dim])
    if worst is None:
        return None
    _, demo, step, dim, value = worst
    return OutOfBoundsActions(
        str(path), count, nonfinite, total, demo, step, dim, value, low[dim], high[dim]
    )
