"""robopolicy's MuJoCo tasks, registered with gymnasium as ``robopolicy/<Task>-v0``, and the
robosuite 1.5 tasks as ``robosuite/<EnvName>-v0`` (``envs.robosuite``).

Importing this package (``import robopolicy`` does it) registers them; the entry points are
strings, so no simulator is loaded until an env is made.
"""

from __future__ import annotations

import gymnasium as gym

from envs import robosuite as _robosuite
from envs.robosuite import robosuite_env_id

__all__ = ["TASKS", "register_envs", "robosuite_env_id"]

TASKS: dict[str, tuple[str, int]] = {
    # id: (entry point, max episode steps)
    "robopolicy/PushT-v0": ("envs.pusht:PushTEnv", 300),
    "robopolicy/Lift-v0": ("envs.lift:LiftEnv", 100),
    "robopolicy/PickPlace-v0": ("envs.pickplace:PickPlaceEnv", 200),
}


def register_envs() -> None:
    """Register every task once (gymnasium calls this at import; repeated calls are no-ops)."""
    for env_id, (entry_point, max_steps) in TASKS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)
    _robosuite.register_envs()


register_envs()
