"""Which env recorded a dataset, and making that env again: robomimic's ``env_args`` both ways.

A dataset's ``data.attrs["env_args"]`` is either one of ours (type 4: ``env_name`` is the
gymnasium id) or robomimic's robosuite layout (type 1: ``env_name`` is the robosuite class,
``env_kwargs`` the ``robosuite.make`` arguments, controller config included). Type 1 maps to
``robosuite/<env_name>-v0``, whose adapter takes those kwargs as they are (converting robosuite
1.4 controller configs). Every problem is reported against the file and the key, before any
training starts.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym

import envs
from robopolicy.config import ConfigError
from robopolicy.data.hdf5 import ROBOPOLICY_ENV_TYPE, DatasetError, dataset_info, make_env_args
from robopolicy.sim.vector import make_env

ROBOSUITE_ENV_TYPE = envs.robosuite.ROBOSUITE_ENV_TYPE


def env_spec_from_env_args(env_args: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """``(env_id, env_kwargs)`` for ``gymnasium.make`` from a dataset's ``env_args``;
    ``where`` (the file) prefixes every error."""
    kind, name = env_args.get("type"), env_args.get("env_name")
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{where}: data.attrs['env_args']['env_name'] is missing or empty")
    kwargs = env_args.get("env_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise DatasetError(f"{where}: data.attrs['env_args']['env_kwargs'] is not a JSON object")
    if kind == ROBOPOLICY_ENV_TYPE:
        return name, dict(kwargs)
    if kind == ROBOSUITE_ENV_TYPE:
        return envs.robosuite_env_id(name), {"env_kwargs": dict(kwargs)}
    raise DatasetError(
        f"{where}: data.attrs['env_args']['type'] is {kind!r}; robopolicy makes envs of type "
        f"{ROBOSUITE_ENV_TYPE} (robosuite) and {ROBOPOLICY_ENV_TYPE} (its own tasks)"
    )


def dataset_env_id(path: str | os.PathLike[str], env_args: dict[str, Any]) -> str:
    """The gymnasium id of the env that recorded the dataset at ``path``."""
    return env_spec_from_env_args(env_args, str(path))[0]


def env_spec_from_dataset(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """``(env_id, env_kwargs)`` that reproduce the dataset's env and its observations: image
    keys in the file ask for ``obs_type="both"`` at the images' size."""
    info = dataset_info(path)
    env_id, kwargs = env_spec_from_env_args(info["env_args"], str(path))
    images = {k: v["shape"] for k, v in info["obs"].items() if k.endswith("_image")}
    if images and "obs_type" not in kwargs:
        kwargs["obs_type"] = "both"
        kwargs["image_size"] = int(next(iter(images.values()))[0])
    return env_id, kwargs


def make_env_from_dataset(path: str | os.PathLike[str], **overrides: Any) -> gym.Env:
    """The env that recorded ``path``, checked to produce every observation key it holds."""
    env_id, kwargs = env_spec_from_dataset(path)
    try:
        env = make_env(env_id, **{**kwargs, **overrides})
    except ValueError as err:  # unknown env or controller, robosuite missing
        raise DatasetError(f"{path}: data.attrs['env_args']: {err}") from err
    keys = dataset_info(path)["obs"]
    missing = sorted(set(keys) - set(env.observation_space.spaces))
    if missing:
        env.close()
        raise DatasetError(
            f"{path}: observation keys {missing} are not produced by {env_id}; it gives "
            f"{sorted(env.observation_space.spaces)}"
        )
    return env


def resolve_env(
    env_id: str, env_kwargs: dict[str, Any], env_from_dataset: str | None, where: str = "task"
) -> tuple[str, dict[str, Any]]:
    """``(env_id, env_kwargs)`` of a config that names its env by id, or by a dataset
    (``<where>.env_from_dataset``): the dataset's env, with ``env_kwargs`` overriding its kwargs.
    An ``env_id`` given beside a dataset must agree with it."""
    if not env_from_dataset:
        return env_id, dict(env_kwargs)
    dataset_id, dataset_kwargs = env_spec_from_dataset(env_from_dataset)
    if env_id and env_id != dataset_id:
        raise ConfigError(
            f"{where}.env_id={env_id} but {where}.env_from_dataset={env_from_dataset} was "
            f"recorded on {dataset_id}; set one of them"
        )
    return dataset_id, {**dataset_kwargs, **env_kwargs}


def collection_env_args(
    vector_env: gym.vector.VectorEnv, env_id: str, env_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The ``env_args`` to write for data recorded on ``vector_env``: robomimic's robosuite
    layout for a ``robosuite/`` env (the adapter knows its ``robosuite.make`` kwargs), else ours
    (type 4)."""
    if env_id.startswith(envs.robosuite.ID_PREFIX):
        return vector_env.call("robomimic_env_args")[0]
    return make_env_args(env_id, env_kwargs)
