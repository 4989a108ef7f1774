"""robomimic's filter keys (``mask/<name>``) for a freshly collected dataset.

robomimic's published datasets carry a random 90/10 ``train``/``valid`` split and low-data
subsets (``20_percent``, with its own ``20_percent_train``/``20_percent_valid``); its training
configs name them through ``filter_key``. Collected datasets get the same keys, drawn from a
fixed seed so that the same collection always has the same split.
"""

from __future__ import annotations

import numpy as np

VALID_RATIO = 0.1
SUBSET_PERCENTS = (20,)


def _split(indices: np.ndarray, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """``indices`` shuffled into (train, valid), at least one of each when there are two."""
    n = len(indices)
    n_valid = min(max(round(n * VALID_RATIO), 1), n - 1) if n > 1 else 0
    shuffled = rng.permutation(indices)
    return sorted(int(i) for i in shuffled[n_valid:]), sorted(int(i) for i in shuffled[:n_valid])


def robomimic_masks(num_demos: int, seed: int = 0) -> dict[str, list[int]]:
    """Episode indices of each filter key: ``train``, ``valid`` and, per percentage p in
    ``SUBSET_PERCENTS``, ``p_percent`` (at least one demo) split into its own train/valid."""
    if num_demos < 1:
        raise ValueError(f"num_demos must be >= 1, got {num_demos}")
    rng = np.random.default_rng(seed)
    masks: dict[str, list[int]] = {}
    masks["train"], masks["valid"] = _split(np.arange(num_demos), rng)
    for percent in SUBSET_PERCENTS:
        size = max(1, round(num_demos * percent / 100))
        subset = np.sort(rng.permutation(num_demos)[:size])
        name = f"{percent}_percent"
        masks[name] = [int(i) for i in subset]
        masks[f"{name}_train"], masks[f"{name}_valid"] = _split(subset, rng)
    return masks
