"""Shared machinery of the robopolicy MuJoCo tasks.

Each task is an MJCF scene in ``assets/`` plus a subclass that says how to randomise the initial
state, how to apply an action, what the low-dimensional observation holds, and what success and
the dense reward are. Everything else (spaces, observation types, cameras, physics stepping,
state save/restore, rendering) lives here once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

# Chooses MUJOCO_GL / PYOPENGL_PLATFORM before mujoco is imported anywhere.
from robopolicy.sim.render import gl_renderer_name, make_renderer  # isort: skip

import gymnasium as gym
import mujoco
import numpy as np

from envs.expert_host import ExpertHost
from envs.options import check_env_options

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


class MujocoTaskEnv(ExpertHost, gym.Env):
    """A MuJoCo manipulation task with the robopolicy observation and action conventions.

    Observations are a ``Dict``: low-dimensional keys for ``obs_type="state"``, ``<camera>_image``
    keys (uint8 H×W×3) for ``"pixels"``, both for ``"both"``. Actions are a ``Box`` in [-1, 1].
    ``info["is_success"]`` is set on every step; the episode terminates on success.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    # Filled in by each task.
    xml_file: ClassVar[str]
    cameras: ClassVar[tuple[str, ...]]
    control_hz: ClassVar[float]
    action_dim: ClassVar[int]
    # Action dimensions that are open/close commands (-1 / +1), not positions: executors
    # threshold them, and RTI keeps them from locking its warm start.
    discrete_action_dims: ClassVar[tuple[int, ...]] = ()
    action_meaning: ClassVar[tuple[str, ...]]  # one line per action dim, for deployment
    expert_class: ClassVar[str]  # "module:Class" of the task's scripted expert

    def __init__(
        self,
        obs_type: str = "state",
        image_size: int = 84,
        reward_type: str = "sparse",
        render_mode: str | None = None,
        render_size: int = 256,
    ) -> None:
        check_env_options(obs_type, reward_type, render_mode, image_size)
        self.obs_type = obs_type
        self.image_size = int(image_size)
        self.reward_type = reward_type
        self.render_mode = render_mode
        self.render_size = int(render_size)

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / self.xml_file))
        self.data = mujoco.MjData(self.model)
        self.n_substeps = max(1, round(1.0 / (self.control_hz * self.model.opt.timestep)))
        self.metadata = {**self.metadata, "render_fps": int(self.control_hz)}
        self._renderers: dict[int, mujoco.Renderer] = {}

        spaces: dict[str, gym.Space] = {}
        if obs_type in ("state", "both"):
            for key, dim in self.low_dim_spec().items():
                spaces[key] = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float64)
        if obs_type in ("pixels", "both"):
            shape = (self.image_size, self.image_size, 3)
            for cam in self.cameras:
                spaces[f"{cam}_image"] = gym.spaces.Box(0, 255, shape, dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)

    # ---- what each task defines -------------------------------------------------------------
    def low_dim_spec(self) -> dict[str, int]:
        """Names and sizes of the low-dimensional observation keys."""
        raise NotImplementedError

    def low_dim_obs(self) -> dict[str, np.ndarray]:
        """The low-dimensional observation of the current state (float64 vectors)."""
        raise NotImplementedError

    def _reset_task(self, rng: np.random.Generator) -> None:
        """Randomise the initial state in ``self.data`` (qpos, mocap, ctrl) from ``rng``."""
        raise NotImplementedError

    def _apply_action(self, action: np.ndarray) -> None:
        """Turn a clipped action in [-1, 1] into actuator controls."""
        raise NotImplementedError

    def _is_success(self) -> bool:
        raise NotImplementedError

    def _dense_reward(self) -> float:
        raise NotImplementedError

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self._reset_task(self.np_random)
        mujoco.mj_forward(self.model, self.data)
        if self._expert_noise is not None:
            self._start_expert_episode()
        return self._observation(), {"is_success": self._is_success()}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"{type(self).__name__}: action shape {action.shape} != {self.action_space.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{type(self).__name__}: non-finite action {action}")
        self._apply_action(np.clip(action, -1.0, 1.0))
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        # mj_step leaves positions and contacts at the state before its last integration:
        # recompute them (the position stage is all that observations, success and reward read)
        # so they describe the state returned.
        mujoco.mj_fwdPosition(self.model, self.data)
        success = self._is_success()
        reward = float(success) if self.reward_type == "sparse" else self._dense_reward()
        return self._observation(), reward, success, False, {"is_success": success}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera(self.cameras[0], self.render_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # ---- helpers shared by experts, data collection and eval --------------------------------
    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """An RGB uint8 image (size×size×3) from ``camera`` in the current state."""
        size = self.image_size if size is None else int(size)
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = make_renderer(self.model, size, size)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render().copy()

    def gl_renderer_name(self) -> str:
        """Which OpenGL implementation draws this env's images (a GPU, or Mesa's llvmpipe)."""
        if not self._renderers:
            self.render_camera(self.cameras[0])
        return gl_renderer_name(next(iter(self._renderers.values())))

    def get_state(self) -> np.ndarray:
        """The full physics state (time, qpos, qvel, act, mocap) as one flat vector."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(self.model, spec))
        mujoco.mj_getState(self.model, self.data, state, spec)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state`` (robomimic's ``reset_to``)."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.asarray(state, dtype=np.float64)
        expected = mujoco.mj_stateSize(self.model, spec)
        if state.shape != (expected,):
            raise ValueError(f"{type(self).__name__}: state shape {state.shape} != ({expected},)")
        mujoco.mj_setState(self.model, self.data, state, spec)
        mujoco.mj_forward(self.model, self.data)

    def _observation(self) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self.obs_type in ("state", "both"):
            obs.update(self.low_dim_obs())
        if self.obs_type in ("pixels", "both"):
            for cam in self.cameras:
                obs[f"{cam}_image"] = self.render_camera(cam)
        return obs

    # ---- small MuJoCo lookups ---------------------------------------------------------------
    def _body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def _site_pos(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def _in_contact(self, geoms_a: set[int], geoms_b: set[int]) -> bool:
        """True when any geom of ``geoms_a`` touches any geom of ``geoms_b``."""
        n = self.data.ncon
        for g1, g2 in zip(self.data.contact.geom1[:n], self.data.contact.geom2[:n], strict=True):
            if (g1 in geoms_a and g2 in geoms_b) or (g2 in geoms_a and g1 in geoms_b):
                return True
        return False
