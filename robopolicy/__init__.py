"""robopolicy: diffusion and flow-matching robot policies, and the RL that improves them.

Importing the package registers the tasks (``robopolicy/<Task>-v0``) with gymnasium. Gymnasium 1.x
no longer loads ``gymnasium.envs`` entry points, so registration rides on this import; it only
records entry-point strings and imports no simulator.
"""

import envs as _envs  # noqa: F401  (registers robopolicy/<Task>-v0)

__version__ = "0.1.0"
