"""Env construction by gymnasium id, single and vectorised.

Vector envs run with autoreset disabled: the rollout loop resets each finished sub-env itself,
with the next seed from its list, so that every episode's seed is known and reproducible.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import robopolicy  # noqa: F401  (registers robopolicy/<Task>-v0)


class EnvUnavailableError(ValueError):
    """The env's simulator is not installed; a ``ValueError`` so the CLI reports it in a line."""


def make_env(env_id: str, **env_kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with an error that lists the known ids, or says what is missing."""
    try:
        return gym.make(env_id, **env_kwargs)
    except gym.error.Error as err:
        known = sorted(k for k in gym.registry if k.startswith(("robopolicy/", "robosuite/")))
        raise ValueError(f"cannot make env {env_id!r} ({err}); robopolicy tasks: {known}") from err
    except ImportError as err:  # the simulator behind the id is not installed (robosuite)
        raise EnvUnavailableError(f"cannot make env {env_id!r}: {err}") from err


def make_vector_env(
    env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None, asynchronous: bool = True
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` in worker processes (or in-process when synchronous)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    env_kwargs = dict(env_kwargs or {})
    make_env(env_id, **env_kwargs).close()  # fail here, clearly, not inside a worker process
    fns = [lambda: make_env(env_id, **env_kwargs) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.DISABLED
    if asynchronous and num_envs > 1:
        return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="spawn")
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
