"""PushT: push a T-shaped block to a target pose with a round pusher (planar).

The action is the pusher's target position (2-D, [-1, 1] mapped to the table), as in Diffusion
Policy's Push-T; position actuators drive the pusher there. The block slides and turns on
damped planar joints, so it moves only while pushed. The target pose is fixed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.base import MujocoTaskEnv


def wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class PushTEnv(MujocoTaskEnv):
    """``robopolicy/PushT-v0``. Success: block within ``POS_TOL`` metres and ``ANGLE_TOL``
    radians of the target pose.

    Low-dim observation: ``agent_pos`` (2: pusher xy) and ``object`` (4: block x, y, sin, cos of
    its angle). Dense reward: 1 - (position error / 0.1 + angle error / pi) / 2 clipped to
    [0, 1], and 2 on success.
    """

    xml_file: ClassVar[str] = "pusht.xml"
    expert_class: ClassVar[str] = "envs.experts.pusht_expert:PushTExpert"
    cameras: ClassVar[tuple[str, ...]] = ("agentview",)
    control_hz: ClassVar[float] = 10.0
    action_dim: ClassVar[int] = 2

    WORKSPACE = 0.25  # action 1.0 -> 0.25 m
    POS_TOL = 0.02
    ANGLE_TOL = np.deg2rad(12.0)
    GOAL = (0.0, 0.0, np.pi / 4)
    BLOCK_RANGE = 0.12  # initial block xy drawn in [-BLOCK_RANGE, BLOCK_RANGE]^2
    BLOCK_RADIUS = 0.077  # farthest point of the T from its origin
    PUSHER_RADIUS = 0.015

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._block = [self.model.joint(n).qposadr[0] for n in ("block_x", "block_y", "block_yaw")]
        self._pusher = [self.model.joint(n).qposadr[0] for n in ("pusher_x", "pusher_y")]

    def low_dim_spec(self) -> dict[str, int]:
        return {"agent_pos": 2, "object": 4}

    def block_pose(self) -> np.ndarray:
        return self.data.qpos[self._block].copy()

    def pusher_pos(self) -> np.ndarray:
        return self.data.qpos[self._pusher].copy()

    def low_dim_obs(self) -> dict[str, np.ndarray]:
        x, y, theta = self.block_pose()
        return {
            "agent_pos": self.pusher_pos(),
            "object": np.array([x, y, np.sin(theta), np.cos(theta)]),
        }

    def pose_error(self, pose: np.ndarray | None = None) -> tuple[float, float]:
        """(position error in metres, absolute wrapped angle error in radians)."""
        x, y, theta = self.block_pose() if pose is None else pose
        gx, gy, gtheta = self.GOAL
        return float(np.hypot(x - gx, y - gy)), abs(wrap_angle(theta - gtheta))

    def _reset_task(self, rng: np.random.Generator) -> None:
        while True:
            pose = np.array(
                [*rng.uniform(-self.BLOCK_RANGE, self.BLOCK_RANGE, 2), rng.uniform(-np.pi, np.pi)]
            )
            pos_err, ang_err = self.pose_error(pose)
            if pos_err > 3 * self.POS_TOL or ang_err > 3 * self.ANGLE_TOL:
                break
        clearance = self.BLOCK_RADIUS + self.PUSHER_RADIUS + 0.01
        while True:
            pusher = rng.uniform(-0.2, 0.2, 2)
            if np.hypot(*(pusher - pose[:2])) > clearance:
                break
        self.data.qpos[self._block] = pose
        self.data.qpos[self._pusher] = pusher
        self.data.ctrl[:] = pusher

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action * self.WORKSPACE

    def _is_success(self) -> bool:
        pos_err, ang_err = self.pose_error()
        return pos_err < self.POS_TOL and ang_err < self.ANGLE_TOL

    def _dense_reward(self) -> float:
        if self._is_success():
            return 2.0
        pos_err, ang_err = self.pose_error()
        return float(np.clip(1.0 - (pos_err / 0.1 + ang_err / np.pi) / 2, 0.0, 1.0))
