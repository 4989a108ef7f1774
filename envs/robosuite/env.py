"""robosuite 1.5 tasks behind robopolicy's gymnasium conventions, with robomimic's observations.

robomimic 0.3.0's own wrapper (``EnvRobosuite``) targets robosuite 1.4 and breaks on 1.5, so this
adapter is written against robosuite's public API (``robosuite.make``, the composite controller
configs, ``sim.get_state``) instead:

- observations are robomimic's keys (``robot0_eef_pos``, ``robot0_eef_quat``,
  ``robot0_gripper_qpos``, ..., ``object`` for robosuite's ``object-state``) and, with
  ``obs_type`` "pixels"/"both", ``<camera>_image`` rendered by robosuite's offscreen renderer
  and flipped upright as robomimic stores them;
- ``info["is_success"]`` is robosuite's ``_check_success``; the sparse reward is 1 on success;
  an episode terminates on success and is truncated at ``horizon`` steps;
- ``reset(seed=s)`` reseeds robosuite's own generator (object placement, joint noise), so a seed
  fixes the initial state;
- states are ``sim.get_state().flatten()`` (time, qpos, qvel), robomimic's ``states`` layout;
- ``robomimic_env_args()`` is the ``env_args`` robomimic writes into its datasets (type 1).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.expert_host import ExpertHost
from envs.options import check_env_options
from envs.robosuite import ROBOSUITE_ENV_TYPE
from envs.robosuite.controllers import to_composite
from envs.robosuite.loader import import_robosuite

DEFAULT_CAMERAS = ("agentview", "robot0_eye_in_hand")
DEFAULT_HORIZON = 400  # robomimic's rollout horizon for Lift, Can and Square
# robomimic's low-dimensional keys, in the order its datasets list them; the env gives those
# that robosuite 1.5 still produces (it dropped the end-effector velocities).
ROBOMIMIC_LOW_DIM_KEYS = (
    "object",
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_eef_vel_ang",
    "robot0_eef_vel_lin",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)
EXPERTS = {
    "Lift": "envs.robosuite.experts:LiftExpert",
    "PickPlaceCan": "envs.robosuite.experts:CanExpert",
    "NutAssemblySquare": "envs.robosuite.experts:SquareExpert",
}
# What robomimic's datasets pass to robosuite.make besides the controller; the adapter decides
# rendering, termination and reward shaping itself (below), whatever a dataset says.
_DEFAULT_KWARGS: dict[str, Any] = {
    "robots": ["Panda"],
    "control_freq": 20,
    "use_object_obs": True,
    "camera_depths": False,
    "camera_names": list(DEFAULT_CAMERAS),
}


class RobosuiteEnv(ExpertHost, gym.Env):
    """``robosuite/<EnvName>-v0``: one robosuite 1.5 task (``env_name``).

    ``env_kwargs`` are ``robosuite.make`` keyword arguments in robomimic's ``env_args`` layout;
    their controller config may be robosuite 1.4's (converted, see ``controllers``). The
    adapter's own arguments win over the rendering and reward keys in them: ``obs_type`` sets
    ``use_camera_obs``, ``image_size`` the camera size, ``reward_type`` ``reward_shaping``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}
    discrete_action_dims: ClassVar[tuple[int, ...]] = (6,)
    action_meaning: ClassVar[tuple[str, ...]] = (
        "end-effector x displacement (x 5 cm, robot base frame)",
        "end-effector y displacement (x 5 cm)",
        "end-effector z displacement (x 5 cm)",
        "end-effector rotation about x (axis-angle, x 0.5 rad)",
        "end-effector rotation about y (x 0.5 rad)",
        "end-effector rotation about z (x 0.5 rad)",
        "gripper: -1 open, +1 close",
    )

    def __init__(
        self,
        env_name: str,
        obs_type: str = "state",
        image_size: int = 84,
        reward_type: str = "sparse",
        render_mode: str | None = None,
        render_size: int = 256,
        horizon: int = DEFAULT_HORIZON,
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        check_env_options(obs_type, reward_type, render_mode, image_size)
        if int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        robosuite = import_robosuite()
        if env_name not in robosuite.ALL_ENVIRONMENTS:
            raise ValueError(
                f"robosuite has no env {env_name!r}; it has {sorted(robosuite.ALL_ENVIRONMENTS)}"
            )
        self.env_name = env_name
        self.obs_type = obs_type
        self.image_size = int(image_size)
        self.reward_type = reward_type
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.horizon = int(horizon)
        self.robosuite_version = robosuite.__version__
        self.expert_class = EXPERTS.get(env_name, "")  # "": no scripted expert
        self.make_kwargs = self._make_kwargs(robosuite, dict(env_kwargs or {}))
        self.cameras = tuple(self.make_kwargs["camera_names"])
        self.control_hz = float(self.make_kwargs["control_freq"])
        self.metadata = {**self.metadata, "render_fps": int(self.control_hz)}
        try:
            self._env = robosuite.make(env_name, **copy.deepcopy(self.make_kwargs))
        except TypeError as err:  # a keyword robosuite 1.5 does not take
            raise ValueError(f"robosuite.make({env_name!r}) refused env_kwargs: {err}") from err
        self._fast_rendering()
        self._steps = 0

        spec = self._env.observation_spec()
        self.low_dim_keys = tuple(k for k in ROBOMIMIC_LOW_DIM_KEYS if _raw_key(k) in spec)
        spaces: dict[str, gym.Space] = {}
        if obs_type in ("state", "both"):
            for key in self.low_dim_keys:
                shape = np.shape(spec[_raw_key(key)])
                spaces[key] = gym.spaces.Box(-np.inf, np.inf, shape, dtype=np.float64)
        if obs_type in ("pixels", "both"):
            shape = (self.image_size, self.image_size, 3)
            for cam in self.cameras:
                spaces[f"{cam}_image"] = gym.spaces.Box(0, 255, shape, dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        low, high = self._env.action_spec
        self.action_space = gym.spaces.Box(
            np.asarray(low, np.float32), np.asarray(high, np.float32), dtype=np.float32
        )

    def _make_kwargs(self, robosuite, env_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The ``robosuite.make`` kwargs: robomimic's defaults, then ``env_kwargs``, then what
        this adapter decides (rendering, termination, reward shaping)."""
        kwargs = {**copy.deepcopy(_DEFAULT_KWARGS), **_plain(env_kwargs)}
        robots = kwargs["robots"]
        robots = [robots] if isinstance(robots, str) else list(robots)
        if len(robots) != 1:
            raise ValueError(f"env_kwargs['robots'] must name one robot, got {robots}")
        if robots[0] not in robosuite.ALL_ROBOTS:
            raise ValueError(
                f"env_kwargs['robots'] names {robots[0]!r}, which robosuite lacks; it has "
                f"{sorted(robosuite.ALL_ROBOTS)}"
            )
        controller = kwargs.get("controller_configs")
        if controller is None:
            controller = robosuite.load_composite_controller_config(robot=robots[0])
        kwargs["controller_configs"] = to_composite(
            controller, robosuite.ALL_COMPOSITE_CONTROLLERS, robosuite.ALL_PART_CONTROLLERS
        )
        pixels = self.obs_type in ("pixels", "both")
        kwargs.update(
            robots=robots,
            has_renderer=False,
            has_offscreen_renderer=pixels or self.render_mode is not None,
            use_camera_obs=pixels,
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            reward_shaping=self.reward_type == "dense",
            ignore_done=True,  # the adapter truncates at its own horizon
            hard_reset=False,  # reload the model on reset: slow, and nothing here needs it
        )
        kwargs["camera_names"] = list(kwargs["camera_names"])
        json.dumps(kwargs)  # robomimic stores them as JSON: fail now, not when writing a dataset
        return kwargs

    def _fast_rendering(self) -> None:
        """Shadows and reflections off: under Mesa's llvmpipe (EGL on a CPU) they halve the
        frame rate and more, and policies trained here never needed them. The model persists
        across resets (``hard_reset=False``), so once is enough."""
        model = self._env.sim.model._model
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # robosuite draws placements and joint noise from env.rng, which its samplers also
        # hold: reseed that generator in place, from ours, so a seed fixes the initial state.
        child = np.random.default_rng(int(self.np_random.integers(2**63)))
        self._env.rng.bit_generator.state = child.bit_generator.state
        raw = self._env.reset()
        self._steps = 0
        if self._expert_noise is not None:
            self._start_expert_episode()
        return self._observation(raw), {"is_success": self.is_success()}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"{self.env_name}: action shape {action.shape} != {self.action_space.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.env_name}: non-finite action {action}")
        raw, shaped, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = self.is_success()
        reward = float(success) if self.reward_type == "sparse" else float(shaped)
        truncated = self._steps >= self.horizon and not success
        return self._observation(raw), reward, success, truncated, {"is_success": success}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(self.cameras[0], self.render_size)

    def close(self) -> None:
        self._env.close()

    # ---- helpers shared by experts, data collection and eval --------------------------------
    @property
    def robosuite_env(self):
        """The wrapped robosuite env (privileged state for the experts)."""
        return self._env

    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """An upright RGB uint8 image (size×size×3) from ``camera`` in the current state."""
        size = self.image_size if size is None else int(size)
        frame = self._env.sim.render(camera_name=camera, height=size, width=size)
        return np.ascontiguousarray(frame[::-1])

    def get_state(self) -> np.ndarray:
        """``sim.get_state().flatten()``: time, qpos, qvel (robomimic's ``states``)."""
        return np.asarray(self._env.sim.get_state().flatten())

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state`` (or a robomimic dataset's ``states``)."""
        state = np.asarray(state, dtype=np.float64)
        expected = self.get_state().shape
        if state.shape != expected:
            raise ValueError(f"{self.env_name}: state shape {state.shape} != {expected}")
        self._env.sim.set_state_from_flattened(state)
        self._env.sim.forward()

    def observation(self) -> dict[str, np.ndarray]:
        """The observation of the current sim state, e.g. after ``set_state`` (robomimic's
        ``reset_to``): robosuite's observables recomputed, not their per-step cache."""
        return self._observation(self._env._get_observations(force_update=True))

    def robomimic_env_args(self) -> dict[str, Any]:
        """``data.attrs["env_args"]`` as robomimic writes it for this env."""
        return {
            "env_name": self.env_name,
            "env_version": self.robosuite_version,
            "type": ROBOSUITE_ENV_TYPE,
            "env_kwargs": copy.deepcopy(self.make_kwargs),
        }

    def _observation(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.obs_type in ("state", "both"):
            for key in self.low_dim_keys:
                obs[key] = np.asarray(raw[_raw_key(key)], dtype=np.float64)
        if self.obs_type in ("pixels", "both"):
            for cam in self.cameras:
                # robosuite renders in OpenGL's convention (bottom row first)
                obs[f"{cam}_image"] = np.ascontiguousarray(raw[f"{cam}_image"][::-1])
        return obs


def _plain(value: Any) -> Any:
    """``value`` with every mapping a dict and every sequence a list (configs hand over
    OmegaConf containers; robosuite and JSON want plain ones)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _raw_key(key: str) -> str:
    """robosuite's name for one of robomimic's observation keys."""
    return "object-state" if key == "object" else key
