"""Demonstrations on disk in robomimic's HDF5 layout, so robomimic's loaders read our data as-is
and our loaders read robomimic's published datasets.

Layout::

    data                      attrs: total (samples over all demos), env_args (JSON string)
    data/demo_<i>             attrs: num_samples (N)
        obs/<key>             (N, ...)   observation before each action
        next_obs/<key>        (N, ...)   observation after each action
        actions               (N, A)
        rewards               (N,)
        dones                 (N,)       0/1
        states                (N, S)     simulator state, for exact resets
    mask/<filter>             demo names as bytes (b"demo_0"), e.g. "train" / "valid"

``env_args`` is ``{"env_name", "type", "env_kwargs"}``. robomimic numbers its environment types
1 (robosuite), 2 (gym) and 3 (iGibson MoMaRT); our gymnasium tasks are a fourth kind,
``ROBOPOLICY_ENV_TYPE = 4``, which robomimic's ``EnvUtils`` does not know, so it can train on our
files but not roll out in our environments (we do that ourselves from ``env_name``).

Files are written atomically: to a temporary file beside the target, renamed into place only once
complete, so a crash mid-collection never leaves a half-written file under the real name. The
temporary name carries the writer's host and process id (``<name>.tmp-<host>-<pid>-<tag>``): a
writer killed outright (``kill -9``) cannot delete its file, so the next writer of the same target
deletes the temporaries of processes on this host that no longer run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
from numpy.typing import ArrayLike

ROBOPOLICY_ENV_TYPE = 4
"""``env_args["type"]`` of our gymnasium tasks; robomimic's ``EnvType`` stops at 3."""

_ENV_ARGS_KEYS = ("env_name", "type", "env_kwargs")
_DEMO_NAME = re.compile(r"demo_(\d+)")
_TEMP_SUFFIX = re.compile(r"\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-[0-9a-f]{8}")
"""``.tmp-<host>-<pid>-<tag>`` (and ``.tmp-<pid>-<tag>``, as written before the host was added)."""


class DatasetError(ValueError):
    """A dataset file is unreadable or does not follow the layout; the message names the file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset file does not exist; also a ``FileNotFoundError`` for callers catching that."""


def make_env_args(env_name: str, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``env_args`` for one of our gymnasium tasks, e.g. ``make_env_args("robopolicy/Lift-v0")``."""
    return {"env_name": env_name, "type": ROBOPOLICY_ENV_TYPE, "env_kwargs": dict(env_kwargs or {})}


@dataclass(eq=False)
class Episode:
    """One demonstration of N steps, in robomimic's transition form: ``obs[k][t]`` is what the
    policy saw before ``actions[t]`` and ``next_obs[k][t]`` what it saw after.

    Arrays are coerced with ``np.asarray`` and checked on construction, so a malformed episode
    fails where it is built rather than when a training run reads it back. Boolean ``dones`` become
    int64: HDF5 has no boolean type and h5py's enum stand-in confuses other readers.
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray

    def __post_init__(self) -> None:
        self.obs = {k: np.asarray(v) for k, v in self.obs.items()}
        self.next_obs = {k: np.asarray(v) for k, v in self.next_obs.items()}
        self.actions = np.asarray(self.actions)
        self.rewards = np.asarray(self.rewards)
        self.dones = np.asarray(self.dones)
        if self.dones.dtype == np.bool_:
            self.dones = self.dones.astype(np.int64)
        self.states = np.asarray(self.states)

        if self.actions.ndim != 2 or len(self.actions) == 0:
            raise ValueError(f"actions must be (N, A) with N >= 1, got shape {self.actions.shape}")
        n = len(self.actions)
        for name, array, ndim in (
            ("rewards", self.rewards, 1),
            ("dones", self.dones, 1),
            ("states", self.states, 2),
        ):
            if array.ndim != ndim or len(array) != n:
                expected = f"({n},)" if ndim == 1 else f"({n}, S)"
                raise ValueError(f"{name} has shape {array.shape}, expected {expected}")
        if self.obs.keys() != self.next_obs.keys():
            raise ValueError(
                f"obs keys {sorted(self.obs)} differ from next_obs keys {sorted(self.next_obs)}"
            )
        for key, array in self.obs.items():
            if "/" in key:
                raise ValueError(f"obs key {key!r} contains '/', which HDF5 reads as a group")
            if array.ndim == 0 or len(array) != n:
                raise ValueError(
                    f"obs[{key!r}] has shape {array.shape}, expected {n} steps "
                    f"(actions have shape {self.actions.shape})"
                )
            if self.next_obs[key].shape != array.shape:
                raise ValueError(
                    f"next_obs[{key!r}] has shape {self.next_obs[key].shape}, "
                    f"but obs[{key!r}] has shape {array.shape}"
                )

    @property
    def num_samples(self) -> int:
        """Number of transitions (N)."""
        return len(self.actions)

    @classmethod
    def from_steps(
        cls,
        observations: Sequence[Mapping[str, ArrayLike]],
        actions: ArrayLike,
        rewards: ArrayLike,
        dones: ArrayLike,
        states: ArrayLike,
        final_observation: Mapping[str, ArrayLike],
    ) -> Episode:
        """Build an episode from what a rollout loop has at hand: the observation before each of
        the N actions, plus the observation after the last one (which becomes ``next_obs[-1]``)."""
        if not observations:
            raise ValueError("an episode needs at least one observation")
        keys = observations[0].keys()
        for t, observation in enumerate([*observations, final_observation]):
            if observation.keys() != keys:
                where = "final_observation" if t == len(observations) else f"observations[{t}]"
                raise ValueError(
                    f"{where} has keys {sorted(observation)}, "
                    f"but observations[0] has {sorted(keys)}"
                )
        return cls(
            obs={k: np.stack([o[k] for o in observations]) for k in keys},
            next_obs={
                k: np.stack([*(o[k] for o in observations[1:]), final_observation[k]]) for k in keys
            },
            actions=actions,
            rewards=rewards,
            dones=dones,
            states=states,
        )


class DatasetWriter:
    """Streams episodes into a new dataset file, so a collection loop never holds more than one
    episode in memory.

    Episodes go to a temporary file beside ``path``; a clean exit from the ``with`` block writes
    ``total`` and the masks and renames the file into place, while an exception deletes it and
    leaves any existing file at ``path`` untouched::

        with DatasetWriter(path, make_env_args("robopolicy/Lift-v0")) as writer:
            for episode in episodes:
                writer.add(episode)

    ``masks`` maps a filter name (e.g. ``"train"``) to indices of episodes in the order added.
    uint8 observations of rank >= 3 per step are images: chunked one frame per chunk (so a random
    frame reads one chunk) and, with ``compress_images``, gzip-compressed as robomimic does.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        env_args: Mapping[str, Any],
        masks: Mapping[str, Sequence[int]] | None = None,
        compress_images: bool = True,
    ) -> None:
        missing = [k for k in _ENV_ARGS_KEYS if k not in env_args]
        if missing:
            raise ValueError(f"env_args lacks {missing}; it needs {list(_ENV_ARGS_KEYS)}")
        self.path = Path(path)
        self._env_args_json = json.dumps(dict(env_args), indent=4)  # fail early if not JSON
        self._masks = {name: [int(i) for i in indices] for name, indices in (masks or {}).items()}
        for name in self._masks:
            if not name or "/" in name:
                raise ValueError(f"invalid mask name {name!r}")
        self._compress_images = compress_images
        self._tmp_path = self.path.with_name(
            f"{self.path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._file: h5py.File | None = None
        self._first: Episode | None = None
        self._num_episodes = 0
        self._total_samples = 0

    @property
    def num_episodes(self) -> int:
        """Episodes added so far."""
        return self._num_episodes

    @property
    def total_samples(self) -> int:
        """Transitions added so far."""
        return self._total_samples

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self._file = h5py.File(self._tmp_path, "w")
        self._file.create_group("data").attrs["env_args"] = self._env_args_json
        return self

    def add(self, episode: Episode) -> str:
        """Append ``episode`` as the next ``demo_<i>`` and return that name. An episode whose obs
        keys or action size differ from the first one is refused before anything is written."""
        if self._file is None:
            raise RuntimeError("DatasetWriter.add called outside its `with` block")
        self._check_matches_first(episode)
        name = f"demo_{self._num_episodes}"
        group = self._file["data"].create_group(name)
        group.attrs["num_samples"] = episode.num_samples
        for key, array in episode.obs.items():
            self._write_obs(group, f"obs/{key}", array)
            self._write_obs(group, f"next_obs/{key}", episode.next_obs[key])
        for key in ("actions", "rewards", "dones", "states"):
            group.create_dataset(key, data=getattr(episode, key))
        self._num_episodes += 1
        self._total_samples += episode.num_samples
        return name

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._finalize()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._tmp_path.unlink(missing_ok=True)  # gone already after a successful rename

    def _check_matches_first(self, episode: Episode) -> None:
        first = self._first
        if first is None:
            self._first = episode
            return
        if episode.obs.keys() != first.obs.keys():
            raise ValueError(
                f"episode {self._num_episodes} has obs keys {sorted(episode.obs)}, "
                f"but episode 0 has {sorted(first.obs)}"
            )
        if episode.actions.shape[1] != first.actions.shape[1]:
            raise ValueError(
                f"episode {self._num_episodes} has action size {episode.actions.shape[1]}, "
                f"but episode 0 has {first.actions.shape[1]}"
            )

    def _write_obs(self, group: h5py.Group, key: str, array: np.ndarray) -> None:
        if array.dtype != np.uint8 or array.ndim < 4:
            group.create_dataset(key, data=array)
            return
        compression = "gzip" if self._compress_images else None
        group.create_dataset(key, data=array, chunks=(1, *array.shape[1:]), compression=compression)

    def _finalize(self) -> None:
        assert self._file is not None
        self._file["data"].attrs["total"] = self._total_samples
        for name, indices in self._masks.items():
            bad = [i for i in indices if not 0 <= i < self._num_episodes]
            if bad:
                raise ValueError(
                    f"mask {name!r} refers to episodes {bad}, but only "
                    f"{self._num_episodes} were added"
                )
            self._file[f"mask/{name}"] = np.array([f"demo_{i}" for i in indices], dtype="S")
        self._file.close()
        self._file = None
        with open(self._tmp_path, "rb") as f:
            os.fsync(f.fileno())  # the rename must not become durable before the data
        os.replace(self._tmp_path, self.path)


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writers of ``path`` killed outright left beside it: those
    of processes on this host that no longer run (another host's, or a live writer's, stay).
    Returns the deleted paths."""
    path = Path(path)
    host = socket.gethostname()
    removed = []
    for candidate in path.parent.glob(f"{glob_escape(path.name)}.tmp-*"):
        match = _TEMP_SUFFIX.fullmatch(candidate.name[len(path.name) :])
        if match is None or match["host"] not in (None, host) or _running(int(match["pid"])):
            continue
        candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def write_dataset(
    path: str | os.PathLike[str],
    episodes: Iterable[Episode],
    env_args: Mapping[str, Any],
    masks: Mapping[str, Sequence[int]] | None = None,
    compress_images: bool = True,
) -> Path:
    """Write ``episodes`` to ``path`` atomically (see ``DatasetWriter``) and return the path."""
    with DatasetWriter(path, env_args, masks=masks, compress_images=compress_images) as writer:
        for episode in episodes:
            writer.add(episode)
    return writer.path


@contextmanager
def _open(path: str | os.PathLike[str]) -> Iterator[tuple[h5py.File, Path]]:
    """Open a dataset for reading, turning h5py's bare ``OSError``s into errors naming the file."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: dataset file does not exist")
    try:
        file = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(
            f"{path}: not a readable HDF5 file (truncated or corrupt?): {exc}"
        ) from exc
    with file:
        if "data" not in file:
            raise DatasetError(f"{path}: missing group 'data'")
        try:
            yield file, path
        except DatasetError:
            raise
        except OSError as exc:
            raise DatasetError(f"{path}: read failed (truncated or corrupt?): {exc}") from exc


def read_env_args(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``env_args`` dict that says which environment (and settings) recorded the dataset."""
    with _open(path) as (file, path):
        return _env_args(file, path)


def list_demos(path: str | os.PathLike[str], filter_key: str | None = None) -> list[str]:
    """Demo names, all or those under ``mask/<filter_key>``, sorted by index as robomimic does
    (``demo_2`` before ``demo_10``)."""
    with _open(path) as (file, path):
        return _demo_names(file, path, filter_key)


def iter_episodes(
    path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
    filter_key: str | None = None,
) -> Iterator[Episode]:
    """Yield episodes one at a time (for image datasets too large to hold at once), with only obs
    ``keys`` (default all). Being a generator, it opens the file and checks the layout of every
    selected demo on the first ``next()``, so errors surface there rather than at the call.

    Files that lack ``next_obs``, ``states``, ``rewards`` or ``dones`` (some robomimic datasets do)
    are filled in: ``next_obs`` is ``obs`` shifted by one with the last frame repeated, ``states``
    is (N, 0), ``rewards`` zeros and ``dones`` 1 only at the last step.
    """
    with _open(path) as (file, path):
        demos = _demo_names(file, path, filter_key)
        available = _check_demos(file, path, demos)
        selected = list(available if keys is None else keys)
        unknown = [k for k in selected if k not in available]
        if unknown:
            raise DatasetError(f"{path}: no obs keys {unknown}; available: {available}")
        for name in demos:
            yield _read_episode(file["data"][name], path, selected)


def iter_actions(
    path: str | os.PathLike[str], filter_key: str | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(demo name, (N, A) actions)`` of each demo (or ``filter_key``'s), reading nothing
    else: a check of every action costs a fraction of what reading whole episodes would."""
    with _open(path) as (file, path):
        for name in _demo_names(file, path, filter_key):
            group = file["data"][name]
            if "actions" not in group:
                raise DatasetError(f"{path}: data/{name}/actions is missing")
            yield name, group["actions"][()]


def load_episodes(
    path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
    filter_key: str | None = None,
) -> list[Episode]:
    """All (or ``filter_key``'s) episodes in memory; see ``iter_episodes``."""
    return list(iter_episodes(path, keys=keys, filter_key=filter_key))


def dataset_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A summary read from metadata only (no image data is loaded): ``num_demos``,
    ``total_samples``, ``obs`` (key -> per-step ``shape`` and ``dtype``), ``action_dim``,
    ``filter_keys`` and ``env_args``. The layout of every demo is checked on the way."""
    with _open(path) as (file, path):
        demos = _demo_names(file, path, None)
        _check_demos(file, path, demos)
        first = file["data"][demos[0]] if demos else None
        return {
            "path": str(path),
            "num_demos": len(demos),
            "total_samples": sum(int(file["data"][d].attrs["num_samples"]) for d in demos),
            "obs": {}
            if first is None
            else {
                k: {"shape": tuple(d.shape[1:]), "dtype": str(d.dtype)}
                for k, d in first["obs"].items()
            },
            "action_dim": None if first is None else int(first["actions"].shape[1]),
            "filter_keys": sorted(file["mask"]) if "mask" in file else [],
            "env_args": _env_args(file, path),
        }


def _env_args(file: h5py.File, path: Path) -> dict[str, Any]:
    raw = file["data"].attrs.get("env_args")
    if raw is None:
        raise DatasetError(f"{path}: missing attribute data.attrs['env_args']")
    try:
        env_args = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: data.attrs['env_args'] is not a JSON string: {exc}") from exc
    if not isinstance(env_args, dict):
        raise DatasetError(f"{path}: data.attrs['env_args'] is not a JSON object: {raw!r}")
    return env_args


def _demo_names(file: h5py.File, path: Path, filter_key: str | None) -> list[str]:
    present = list(file["data"])
    for name in present:
        if not _DEMO_NAME.fullmatch(name):
            raise DatasetError(f"{path}: data/{name} is not named demo_<index>")
    if filter_key is None:
        names = present
    else:
        available = sorted(file["mask"]) if "mask" in file else []
        if filter_key not in available:
            raise DatasetError(
                f"{path}: unknown filter key {filter_key!r} (mask/{filter_key}); "
                f"available: {available or 'none'}"
            )
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in file["mask"][filter_key]]
        missing = sorted(set(names) - set(present))
        if missing:
            raise DatasetError(f"{path}: mask/{filter_key} names demos not in data/: {missing}")
    return sorted(names, key=lambda name: int(name[len("demo_") :]))


def _check_demos(file: h5py.File, path: Path, demos: Sequence[str]) -> list[str]:
    """Check each demo's layout from dataset shapes alone; return the obs keys they share."""
    keys: list[str] | None = None
    for name in demos:
        demo_keys = _check_demo(file["data"][name], path)
        if keys is None:
            keys = demo_keys
        elif demo_keys != keys:
            raise DatasetError(
                f"{path}: data/{name}/obs has keys {demo_keys}, but data/{demos[0]}/obs has {keys}"
            )
    return keys or []


def _check_demo(group: h5py.Group, path: Path) -> list[str]:
    where = f"{path}: {group.name.lstrip('/')}"
    for required in ("actions", "obs"):
        if required not in group:
            raise DatasetError(f"{where}/{required} is missing")
    if "num_samples" not in group.attrs:
        raise DatasetError(f"{where} has no num_samples attribute")
    n = int(group.attrs["num_samples"])
    if n < 1:
        raise DatasetError(f"{where} has num_samples={n}; a demo needs at least one step")
    keys = sorted(group["obs"])
    if "next_obs" in group and sorted(group["next_obs"]) != keys:
        raise DatasetError(
            f"{where}/next_obs has keys {sorted(group['next_obs'])}, but obs has {keys}"
        )
    datasets = ["actions", *(k for k in ("rewards", "dones", "states") if k in group)]
    datasets += [f"{prefix}/{k}" for prefix in ("obs", "next_obs") if prefix in group for k in keys]
    for key in datasets:
        shape = group[key].shape
        if not shape or shape[0] != n:
            raise DatasetError(f"{where} has num_samples={n}, but {key} has shape {shape}")
    if group["actions"].ndim != 2:
        raise DatasetError(f"{where}/actions has shape {group['actions'].shape}, expected (N, A)")
    return keys


def _read_episode(group: h5py.Group, path: Path, keys: Sequence[str]) -> Episode:
    n = int(group.attrs["num_samples"])
    obs = {k: group["obs"][k][()] for k in keys}
    if "next_obs" in group:
        next_obs = {k: group["next_obs"][k][()] for k in keys}
    else:
        next_obs = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
    dones = np.zeros(n, dtype=np.int64)
    dones[-1] = 1
    try:
        return Episode(
            obs=obs,
            next_obs=next_obs,
            actions=group["actions"][()],
            rewards=group["rewards"][()] if "rewards" in group else np.zeros(n),
            dones=group["dones"][()] if "dones" in group else dones,
            states=group["states"][()] if "states" in group else np.zeros((n, 0)),
        )
    except ValueError as exc:
        raise DatasetError(f"{path}: {group.name.lstrip('/')}: {exc}") from exc
