"""robopolicy: diffusion and flow-matching robot policies, and the RL that improves them.

Importing the package does three cheap things first:
- asks OpenMP to let idle threads sleep (``OMP_WAIT_POLICY=PASSIVE`` unless set), which must
  happen before torch loads it (``robopolicy.threads``);
- chooses MuJoCo's OpenGL backend (``robopolicy.sim.render``), which must happen before anything
  imports ``mujoco``;
- registers the tasks (``robopolicy/<Task>-v0``) with gymnasium. Gymnasium 1.x no longer loads
  ``gymnasium.envs`` entry points, so registration rides on this import; it records
  entry-point strings only and loads no simulator.
"""

import os as _os  # isort: skip

# Idle OpenMP threads sleep instead of spinning: on a machine with other work, spinning threads
# slowed training 20x (robopolicy/threads.py). Read when torch loads OpenMP, so set first.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from robopolicy.sim import render as _render  # noqa: F401, E402  isort: skip  (before mujoco)
import envs as _envs  # noqa: F401, E402  isort: skip  (registers robopolicy/<Task>-v0)

__version__ = "0.1.0"
