"""robopolicy: diffusion and flow-matching robot policies, and the RL that improves them.

Importing the package does two cheap things first:
- chooses MuJoCo's OpenGL backend (``robopolicy.sim.render``), which must happen before anything
  imports ``mujoco``;
- registers the tasks (``robopolicy/<Task>-v0``) with gymnasium. Gymnasium 1.x no longer loads
  ``gymnasium.envs`` entry points, so registration rides on this import; it records
  entry-point strings only and loads no simulator.
"""

from robopolicy.sim import render as _render  # noqa: F401  isort: skip  (before mujoco)
import envs as _envs  # noqa: F401  isort: skip  (registers robopolicy/<Task>-v0)

__version__ = "0.1.0"
