"""robosuite 1.5 tasks, registered with gymnasium as ``robosuite/<EnvName>-v0`` (see ``env``).

Registration records entry-point strings only: robosuite (slow to import) loads when an env is
made. ``robosuite_env_id`` registers any other robosuite env name on demand, for datasets that
name one (robomimic's ``env_args``).
"""

from __future__ import annotations

import gymnasium as gym

ENTRY_POINT = "envs.robosuite.env:RobosuiteEnv"
ID_PREFIX = "robosuite/"
ROBOSUITE_ENV_TYPE = 1  # robomimic's EnvType.ROBOSUITE_TYPE, in its datasets' env_args
ENV_NAMES = ("Lift", "PickPlaceCan", "NutAssemblySquare")  # the ones with scripted experts


def robosuite_env_id(env_name: str) -> str:
    """``robosuite/<env_name>-v0``, registered if it was not (whether robosuite has such an env
    is checked when it is made)."""
    env_id = f"{ID_PREFIX}{env_name}-v0"
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=ENTRY_POINT, kwargs={"env_name": env_name})
    return env_id


def register_envs() -> None:
    for env_name in ENV_NAMES:
        robosuite_env_id(env_name)
