"""Lift: pick up a cube from a randomised position and raise it by at least 5 cm."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.gripper import GripperTaskEnv


class LiftEnv(GripperTaskEnv):
    """``robopolicy/Lift-v0``. Success: the cube's centre is ``LIFT_HEIGHT`` above its rest height.

    Low-dim observation: ``robot0_eef_pos`` (3), ``robot0_gripper_qpos`` (2) and ``object`` (10:
    cube position, cube quaternion wxyz, cube position relative to the end effector).
    Dense reward: reach + grasp (see ``GripperTaskEnv``) + lift progress, success gives 2.25.
    """

    xml_file: ClassVar[str] = "lift.xml"
    expert_class: ClassVar[str] = "envs.experts.gripper_experts:LiftExpert"
    LIFT_HEIGHT = 0.05
    CUBE_RANGE = 0.08  # cube xy drawn uniformly in [-CUBE_RANGE, CUBE_RANGE]^2
    CUBE_YAW_RANGE = np.pi / 6

    def low_dim_spec(self) -> dict[str, int]:
        return {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2, "object": 10}

    def low_dim_obs(self) -> dict[str, np.ndarray]:
        cube = self.cube_pos()
        quat = self.data.body("cube").xquat.copy()
        return {**self.robot_obs(), "object": np.concatenate([cube, quat, cube - self.eef_pos()])}

    def _reset_task(self, rng: np.random.Generator) -> None:
        self._place_cube(
            rng.uniform(-self.CUBE_RANGE, self.CUBE_RANGE, 2),
            rng.uniform(-self.CUBE_YAW_RANGE, self.CUBE_YAW_RANGE),
        )
        self._place_gripper(self.GRIPPER_START + np.append(rng.uniform(-0.03, 0.03, 2), 0.0))

    def lift_height(self) -> float:
        return float(self.cube_pos()[2] - self.CUBE_HALF)

    def _is_success(self) -> bool:
        return self.lift_height() >= self.LIFT_HEIGHT

    def _dense_reward(self) -> float:
        if self._is_success():
            return 2.25
        lift = min(max(self.lift_height(), 0.0) / self.LIFT_HEIGHT, 1.0)
        return self._reach_grasp_reward() + float(self.grasping()) * lift
