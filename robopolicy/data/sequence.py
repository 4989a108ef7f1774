"""Training windows in Diffusion Policy's sampling scheme, held in memory so that a batch is one
gather per key rather than a trip through a ``DataLoader`` and its worker processes.

For an episode of length L, window starts run over ``s = -(obs_horizon - 1) ..
L - pred_horizon + (action_horizon - 1)`` inclusive. The window at ``s`` observes frames
``s .. s + obs_horizon - 1`` (the last of them is "now") and predicts actions
``s .. s + pred_horizon - 1``; an index before the episode takes its first frame and one past the
end its last (padding by repetition), so the first window sees the initial frame repeated and the
last ones predict the final action held. No window ever reaches into another episode.

An episode too short for that range (``L < pred_horizon - action_horizon - obs_horizon + 2``)
still contributes one window, the one starting at ``-(obs_horizon - 1)``: dropping it would
silently lose a demonstration. ``pred_horizon > L`` needs nothing special; padding covers it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robopolicy.data.hdf5 import Episode, load_episodes

IMAGE_NDIM = 3
"""Per-step rank of an image observation (H, W, C): never normalised, and kept uint8 when stored
so (a quarter of float32's memory; the encoder converts)."""

Batch = dict[str, Any]
"""``{"obs": {key: (B, obs_horizon, ...)}, "actions": (B, pred_horizon, A)}``."""


class SequenceWindows:
    """Every training window of a set of episodes, gathered by index.

    All episodes are concatenated once per key (images as uint8 H x W x C, everything else as
    float32) and the frame rows of every window are precomputed, so ``get_batch`` is one
    ``index_select`` per key; ``index_select`` rather than advanced indexing because it copies
    image rows about ten times faster.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        obs_keys: Sequence[str],
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
    ) -> None:
        _check_horizons(obs_horizon, pred_horizon, action_horizon)
        if not episodes:
            raise ValueError("SequenceWindows needs at least one episode, got none")
        self.obs_keys = list(obs_keys)
        _check_episodes(episodes, self.obs_keys)
        self.obs_horizon = obs_horizon
        self.pred_horizon = pred_horizon
        self.action_horizon = action_horizon
        self.obs = {k: _stack([ep.obs[k] for ep in episodes]) for k in self.obs_keys}
        self.actions = _stack([ep.actions for ep in episodes])
        obs_rows, action_rows = [], []
        offset = 0
        for episode in episodes:
            length = episode.num_samples
            starts = offset + _window_starts(length, obs_horizon, pred_horizon, action_horizon)
            obs_rows.append(_rows(starts, obs_horizon, offset, offset + length - 1))
            action_rows.append(_rows(starts, pred_horizon, offset, offset + length - 1))
            offset += length
        self.obs_rows = torch.from_numpy(np.concatenate(obs_rows))
        """(num_windows, obs_horizon) rows of ``self.obs`` that each window observes."""
        self.action_rows = torch.from_numpy(np.concatenate(action_rows))
        """(num_windows, pred_horizon) rows of ``self.actions`` that each window predicts."""

    @classmethod
    def from_hdf5(
        cls,
        path: str | os.PathLike[str],
        obs_keys: Sequence[str],
        obs_horizon: int,
        pred_horizon: int,
        action_horizon: int,
        filter_key: str | None = None,
    ) -> SequenceWindows:
        """Windows of a robomimic-format file, reading only ``obs_keys`` (and ``filter_key``'s
        demos). The horizons are checked before the file is read, which may take minutes."""
        _check_horizons(obs_horizon, pred_horizon, action_horizon)
        episodes = load_episodes(path, keys=list(obs_keys), filter_key=filter_key)
        return cls(episodes, obs_keys, obs_horizon, pred_horizon, action_horizon)

    def __len__(self) -> int:
        return len(self.obs_rows)

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def obs_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-step shape of each observation key, e.g. ``(84, 84, 3)`` for an image."""
        return {k: tuple(v.shape[1:]) for k, v in self.obs.items()}

    def get_batch(self, indices: Tensor) -> Batch:
        """Windows ``indices`` (a 1-D long tensor) as one batch, see ``Batch``."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return {
            "obs": {k: _gather(v, self.obs_rows, indices) for k, v in self.obs.items()},
            "actions": _gather(self.actions, self.action_rows, indices),
        }

    def __getitem__(self, index: int) -> Batch:
        """Window ``index`` (negative counts from the end), shaped as a batch of one without the
        batch dimension."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        batch = self.get_batch(torch.tensor([index % len(self)]))
        return {"obs": {k: v[0] for k, v in batch["obs"].items()}, "actions": batch["actions"][0]}

    def normalizer_data(self) -> dict[str, Tensor]:
        """Each frame of every non-image observation, and every action, once (not once per window
        that pads with it): what ``Normalizer.fit`` should see."""
        if "actions" in self.obs:
            raise ValueError("an observation key named 'actions' would clash with the actions")
        low_dim = {k: v for k, v in self.obs.items() if v.ndim - 1 != IMAGE_NDIM}
        return {**low_dim, "actions": self.actions}


class RandomBatches:
    """Shuffled batches of windows, epoch after epoch, without end.

    Each epoch is a permutation drawn from ``generator``; with ``drop_last`` the ragged tail of an
    epoch is skipped so every batch has ``batch_size`` windows. ``state_dict`` records the
    generator's state from before the current epoch's permutation and how far into it the run
    has got, so ``load_state_dict`` redraws the same permutation and continues with exactly the
    batches an uninterrupted run would have produced. Its entries other than the generator state
    are plain ints (JSON-safe).
    """

    def __init__(
        self,
        windows: SequenceWindows,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(windows) < batch_size:
            raise ValueError(
                f"only {len(windows)} windows, fewer than batch_size={batch_size}: with "
                f"drop_last every batch would be dropped"
            )
        self.windows = windows
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last
        self._epoch_start: Tensor | None = None  # generator state before _order was drawn
        self._order: Tensor | None = None
        self._position = 0

    def __iter__(self) -> RandomBatches:
        return self

    def __next__(self) -> Batch:
        count = len(self.windows)
        left = count - self._position
        if self._order is not None and (left == 0 or (self.drop_last and left < self.batch_size)):
            self._order, self._position = None, 0
        if self._order is None:
            self._epoch_start = self.generator.get_state()
            self._order = torch.randperm(count, generator=self.generator)
        indices = self._order[self._position : self._position + self.batch_size]
        self._position += len(indices)
        return self.windows.get_batch(indices)

    def close(self) -> None:
        """Nothing to release (``PrefetchedBatches`` has a thread to stop)."""

    def state_dict(self) -> dict[str, Any]:
        """``generator_state`` (uint8 tensor), ``position`` (windows of the current epoch already
        served), and ``num_windows`` / ``batch_size`` so a resume on other data is refused."""
        start = self.generator.get_state() if self._epoch_start is None else self._epoch_start
        return {
            "generator_state": start.clone(),
            "position": self._position,
            "num_windows": len(self.windows),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("num_windows", "batch_size"):
            here = len(self.windows) if name == "num_windows" else self.batch_size
            if int(state[name]) != here:
                raise ValueError(
                    f"cannot resume batches: saved with {name}={int(state[name])}, now {here}"
                )
        position = int(state["position"])
        if not 0 <= position <= len(self.windows):
            raise ValueError(f"batch position {position} outside 0..{len(self.windows)}")
        self.generator.set_state(state["generator_state"])
        self._epoch_start, self._order, self._position = None, None, position
        if position:  # mid-epoch: redraw that epoch's permutation now
            self._epoch_start = self.generator.get_state()
            self._order = torch.randperm(len(self.windows), generator=self.generator)


def _check_horizons(obs_horizon: int, pred_horizon: int, action_horizon: int) -> None:
    if obs_horizon < 1 or pred_horizon < 1 or not 1 <= action_horizon <= pred_horizon:
        raise ValueError(
            "need obs_horizon >= 1, pred_horizon >= 1 and 1 <= action_horizon <= pred_horizon; "
            f"got obs_horizon={obs_horizon}, pred_horizon={pred_horizon}, "
            f"action_horizon={action_horizon}"
        )


def _check_episodes(episodes: Sequence[Episode], obs_keys: list[str]) -> None:
    """Same keys, per-step shapes and action size throughout; otherwise concatenation would fail
    with an error that names neither the key nor the episode."""
    duplicated = sorted({k for k in obs_keys if obs_keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"obs keys {duplicated} are listed more than once")
    first = episodes[0]
    for i, episode in enumerate(episodes):
        unknown = [k for k in obs_keys if k not in episode.obs]
        if unknown:
            raise KeyError(
                f"obs keys {unknown} not in episode {i}; available: {sorted(episode.obs)}"
            )
        for key in obs_keys:
            if episode.obs[key].shape[1:] != first.obs[key].shape[1:]:
                raise ValueError(
                    f"episode {i}: obs[{key!r}] has per-step shape {episode.obs[key].shape[1:]}, "
                    f"but episode 0 has {first.obs[key].shape[1:]}"
                )
        if episode.actions.shape[1] != first.actions.shape[1]:
            raise ValueError(
                f"episode {i} has action size {episode.actions.shape[1]}, "
                f"but episode 0 has {first.actions.shape[1]}"
            )


def _window_starts(
    length: int, obs_horizon: int, pred_horizon: int, action_horizon: int
) -> np.ndarray:
    """Start frames of an episode's windows (see the module docstring), relative to the episode."""
    first = -(obs_horizon - 1)
    last = max(length - pred_horizon + action_horizon - 1, first)
    return np.arange(first, last + 1)


def _rows(starts: np.ndarray, horizon: int, low: int, high: int) -> np.ndarray:
    """(len(starts), horizon) rows ``start .. start + horizon - 1``, clamped into the episode."""
    return np.clip(starts[:, None] + np.arange(horizon), low, high).astype(np.int64)


def _stack(arrays: list[np.ndarray]) -> Tensor:
    """Concatenate along time: uint8 images stay uint8, everything else becomes float32."""
    array = np.concatenate(arrays)
    if array.dtype != np.uint8 or array.ndim - 1 != IMAGE_NDIM:
        array = array.astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array))


def _gather(data: Tensor, rows: Tensor, indices: Tensor) -> Tensor:
    selected = rows.index_select(0, indices)
    return data.index_select(0, selected.reshape(-1)).view(*selected.shape, *data.shape[1:])
