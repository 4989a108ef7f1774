"""PickPlace: pick a cube and place it, released, on a target square at a randomised spot."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.gripper import GripperTaskEnv


class PickPlaceEnv(GripperTaskEnv):
    """``robopolicy/PickPlace-v0``: longer horizon and a precise placement.

    Success: the cube's centre within ``PLACE_TOL`` (xy) of the target's centre, resting on the
    table, and released (no finger touches it).
    Low-dim observation: ``robot0_eef_pos`` (3), ``robot0_gripper_qpos`` (2) and ``object`` (14:
    cube position, quaternion wxyz, cube relative to the end effector, target xy and the cube's
    xy offset from the target).
    Dense reward: reach + grasp, then carry (closeness of the cube to the target), up to 3.
    """

    xml_file: ClassVar[str] = "pickplace.xml"
    expert_class: ClassVar[str] = "envs.experts.gripper_experts:PickPlaceExpert"
    PLACE_TOL = 0.02
    CUBE_X_RANGE = (-0.08, 0.08)
    CUBE_Y_RANGE = (-0.12, -0.04)
    TARGET_X_RANGE = (-0.08, 0.08)
    TARGET_Y_RANGE = (0.04, 0.12)
    CUBE_YAW_RANGE = np.pi / 6

    def low_dim_spec(self) -> dict[str, int]:
        return {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2, "object": 14}

    def target_xy(self) -> np.ndarray:
        return self.data.mocap_pos[0, :2].copy()

    def low_dim_obs(self) -> dict[str, np.ndarray]:
        cube = self.cube_pos()
        quat = self.data.body("cube").xquat.copy()
        target = self.target_xy()
        return {
            **self.robot_obs(),
            "object": np.concatenate(
                [cube, quat, cube - self.eef_pos(), target, cube[:2] - target]
            ),
        }

    def _reset_task(self, rng: np.random.Generator) -> None:
        cube_xy = np.array([rng.uniform(*self.CUBE_X_RANGE), rng.uniform(*self.CUBE_Y_RANGE)])
        self._place_cube(cube_xy, rng.uniform(-self.CUBE_YAW_RANGE, self.CUBE_YAW_RANGE))
        target = [rng.uniform(*self.TARGET_X_RANGE), rng.uniform(*self.TARGET_Y_RANGE)]
        self.data.mocap_pos[0, :2] = target
        self._place_gripper(self.GRIPPER_START + np.append(rng.uniform(-0.03, 0.03, 2), 0.0))

    def placement_error(self) -> float:
        return float(np.linalg.norm(self.cube_pos()[:2] - self.target_xy()))

    def cube_resting(self) -> bool:
        """The cube sits on the table (within 3 mm of its resting height)."""
        return bool(self.cube_pos()[2] < self.CUBE_HALF + 0.003)

    def _is_success(self) -> bool:
        touched = self._in_contact(self._finger_geoms, self._cube_geoms)
        return self.placement_error() < self.PLACE_TOL and self.cube_resting() and not touched

    def _dense_reward(self) -> float:
        if self._is_success():
            return 3.0
        carry = 1.0 - np.tanh(10.0 * self.placement_error())
        return self._reach_grasp_reward() + carry
