"""The floating parallel-jaw gripper shared by Lift and PickPlace.

Action (4-D, in [-1, 1]): end-effector delta xyz (scaled to at most ``MAX_DELTA`` metres per
control step, relative to where the gripper is now, as robosuite's delta controllers do) and a
gripper dimension, -1 open and +1 closed.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.base import MujocoTaskEnv


class GripperTaskEnv(MujocoTaskEnv):
    """A MuJoCo task driven by the floating gripper of ``assets/gripper_scene.xml``."""

    cameras: ClassVar[tuple[str, ...]] = ("agentview", "robot0_eye_in_hand")
    control_hz: ClassVar[float] = 20.0
    action_dim: ClassVar[int] = 4
    discrete_action_dims: ClassVar[tuple[int, ...]] = (3,)  # the gripper
    action_meaning: ClassVar[tuple[str, ...]] = (
        "end-effector dx, x 0.01 m",
        "end-effector dy, x 0.01 m",
        "end-effector dz, x 0.01 m",
        "gripper: -1 open, +1 closed",
    )

    MAX_DELTA = 0.01  # metres per control step at |action| = 1
    FINGER_TRAVEL = 0.045  # finger joint position when fully closed on nothing
    CUBE_HALF = 0.02
    GRIPPER_START = np.array([0.0, 0.0, 0.16])

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._arm_joints = [self.model.joint(f"gripper_{a}").qposadr[0] for a in "xyz"]
        self._finger_joints = [
            self.model.joint(f"{side}_finger_joint").qposadr[0] for side in ("left", "right")
        ]
        self._arm_low = self.model.actuator_ctrlrange[:3, 0].copy()
        self._arm_high = self.model.actuator_ctrlrange[:3, 1].copy()
        self._finger_geoms = {
            self.model.geom("left_finger_pad").id,
            self.model.geom("right_finger_pad").id,
        }
        self._cube_geoms = {self.model.geom("cube").id}
        self._cube_qpos = self.model.joint("cube_joint").qposadr[0]

    # ---- robot ------------------------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        return self._site_pos("grip_site")

    def cube_pos(self) -> np.ndarray:
        return self._body_pos("cube")

    def gripper_qpos(self) -> np.ndarray:
        return self.data.qpos[self._finger_joints].copy()

    def grasping(self) -> bool:
        """Both finger pads touch the cube."""
        return all(self._in_contact({g}, self._cube_geoms) for g in self._finger_geoms)

    def _place_gripper(self, xyz: np.ndarray) -> None:
        """Put the gripper at ``xyz`` (grip-site coordinates), open, at rest."""
        palm = xyz - (self.eef_pos_offset())
        self.data.qpos[self._arm_joints] = palm
        self.data.ctrl[:3] = palm
        self.data.qpos[self._finger_joints] = 0.0
        self.data.ctrl[3:5] = 0.0

    def eef_pos_offset(self) -> np.ndarray:
        """Grip site relative to the palm joint origin (constant: the gripper does not rotate)."""
        return self.model.site("grip_site").pos.copy()

    def _place_cube(self, xy: np.ndarray, yaw: float) -> None:
        adr = self._cube_qpos
        self.data.qpos[adr : adr + 3] = (xy[0], xy[1], self.CUBE_HALF)
        self.data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))

    def _apply_action(self, action: np.ndarray) -> None:
        palm = self.data.qpos[self._arm_joints]
        target = np.clip(palm + action[:3] * self.MAX_DELTA, self._arm_low, self._arm_high)
        self.data.ctrl[:3] = target
        self.data.ctrl[3:5] = (action[3] + 1.0) / 2.0 * self.FINGER_TRAVEL

    def robot_obs(self) -> dict[str, np.ndarray]:
        return {
            "robot0_eef_pos": self.eef_pos(),
            "robot0_gripper_qpos": self.gripper_qpos(),
        }

    def _reach_grasp_reward(self) -> float:
        """Shaped reach + grasp reward of the gripper tasks (robosuite-style), in [0, 1.25]."""
        dist = float(np.linalg.norm(self.eef_pos() - self.cube_pos()))
        return (1.0 - np.tanh(10.0 * dist)) + 0.25 * float(self.grasping())
