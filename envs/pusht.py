"""PushT: push a T-shaped block to a fixed target pose with a round pusher, on a table.

As in Diffusion Policy's Push-T, the action is the pusher's target position: 2-D, in [-1, 1],
mapped linearly to the ±``WORKSPACE`` metre square; position actuators drive the pusher there
within a control step (at up to 1 m/s). The block slides and turns on damped planar joints, so it
moves only while pushed and stops as soon as it is let go: where it ends up depends on where and
how it is pushed, and going around it either way makes the demonstrations multimodal.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from envs.base import MujocoTaskEnv


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """An angle (or array of angles) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    p = np.asarray(points)
    return np.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], axis=-1)


def to_block_frame(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World xy points (..., 2) in the frame of a block at ``pose`` (x, y, theta)."""
    return _rotate(np.asarray(points) - pose[:2], -pose[2])


def to_world_frame(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Block-frame xy points (..., 2) of a block at ``pose`` (x, y, theta) in the world."""
    return _rotate(points, pose[2]) + pose[:2]


class PushTEnv(MujocoTaskEnv):
    """``robopolicy/PushT-v0``: push the T block to within ``POS_TOL`` metres and ``ANGLE_TOL``
    radians of ``GOAL`` (x, y, theta of its centre of mass).

    Low-dim observation: ``agent_pos`` (2: pusher xy) and ``object`` (4: block x, y, sin theta,
    cos theta); the goal is fixed, so it is in neither. Sparse reward 1 on success. Dense reward:
    ``-(min(pos_err / POS_SCALE, 1) + ang_err / pi) / 2``, in [-1, 0] and 0 only at the goal, so
    that position and angle count about equally; 1 on success, above every other value.
    """

    xml_file: ClassVar[str] = "pusht.xml"
    expert_class: ClassVar[str] = "envs.experts.pusht_expert:PushTExpert"
    cameras: ClassVar[tuple[str, ...]] = ("agentview",)
    control_hz: ClassVar[float] = 10.0
    action_dim: ClassVar[int] = 2
    action_meaning: ClassVar[tuple[str, ...]] = (
        "pusher target x, x 0.25 m from the table centre",
        "pusher target y, x 0.25 m from the table centre",
    )

    WORKSPACE = 0.25  # action ±1 -> ±0.25 m, the actuators' control range
    GOAL = np.array([0.0, 0.0, np.pi / 4])  # Diffusion Policy's: table centre, 45 degrees
    # Success tolerances. Looser than Diffusion Policy's 95% coverage: at the worst corner of
    # this box (2 cm and 10 degrees off) the block still covers about half of the target, and
    # 80% at 10 degrees alone. The expert reaches it in 100% of seeds 0..99 (and even 1 cm and
    # 5 degrees in 100% of 50), so policies have room to be judged on precision.
    POS_TOL = 0.02
    ANGLE_TOL = np.pi / 18
    POS_SCALE = 0.1  # position error at which the dense reward's position term saturates
    BLOCK_RANGE = 0.12  # initial block xy drawn in [-BLOCK_RANGE, BLOCK_RANGE]^2, any angle
    PUSHER_RANGE = 0.2  # initial pusher xy drawn in [-PUSHER_RANGE, PUSHER_RANGE]^2
    START_CLEARANCE = 0.01  # initial gap between the pusher and the block

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Where the block's (x, y, theta) and the pusher's (x, y) are in qpos.
        self.block_qpos_adr = [
            self.model.joint(j).qposadr[0] for j in ("block_x", "block_y", "block_yaw")
        ]
        self.pusher_qpos_adr = [self.model.joint(j).qposadr[0] for j in ("pusher_x", "pusher_y")]
        self.pusher_radius = float(self.model.geom("pusher").size[0])
        # The T as boxes in the block frame (centre xy, half sizes xy), read from the MJCF so
        # that the geometry is written down once.
        self.block_boxes = [
            (self.model.geom(g).pos[:2].copy(), self.model.geom(g).size[:2].copy())
            for g in ("block_bar", "block_stem")
        ]

    # ---- state ------------------------------------------------------------------------------
    def block_pose(self) -> np.ndarray:
        """The block's (x, y, theta); theta is the hinge angle, not wrapped."""
        return self.data.qpos[self.block_qpos_adr].copy()

    def pusher_pos(self) -> np.ndarray:
        return self.data.qpos[self.pusher_qpos_adr].copy()

    def pose_error(self, pose: np.ndarray | None = None) -> tuple[float, float]:
        """(position error in metres, wrapped absolute angle error in radians) of ``pose``, by
        default the block's current pose, from ``GOAL``."""
        pose = self.block_pose() if pose is None else np.asarray(pose)
        pos_err = float(np.hypot(*(pose[:2] - self.GOAL[:2])))
        return pos_err, float(abs(wrap_angle(pose[2] - self.GOAL[2])))

    def block_distance(self, points: np.ndarray, pose: np.ndarray | None = None) -> np.ndarray:
        """Signed distance (metres, negative inside) from world xy ``points`` (..., 2) to the
        outline of the block at ``pose`` (default: where it is now)."""
        pose = self.block_pose() if pose is None else np.asarray(pose)
        local = to_block_frame(points, pose)
        dists = []
        for centre, half in self.block_boxes:
            q = np.abs(local - centre) - half
            outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
            dists.append(outside + np.minimum(q.max(axis=-1), 0.0))
        return np.minimum(*dists)

    # ---- the task ---------------------------------------------------------------------------
    def low_dim_spec(self) -> dict[str, int]:
        return {"agent_pos": 2, "object": 4}

    def low_dim_obs(self) -> dict[str, np.ndarray]:
        x, y, theta = self.block_pose()
        return {
            "agent_pos": self.pusher_pos(),
            "object": np.array([x, y, np.sin(theta), np.cos(theta)]),
        }

    def _reset_task(self, rng: np.random.Generator) -> None:
        # Rejection sampling keeps the draws, and so the initial state, a function of the seed.
        while True:
            xy = rng.uniform(-self.BLOCK_RANGE, self.BLOCK_RANGE, 2)
            pose = np.array([*xy, rng.uniform(-np.pi, np.pi)])
            pos_err, ang_err = self.pose_error(pose)
            if pos_err >= 2 * self.POS_TOL or ang_err >= 2 * self.ANGLE_TOL:
                break
        while True:
            pusher = rng.uniform(-self.PUSHER_RANGE, self.PUSHER_RANGE, 2)
            if self.block_distance(pusher, pose) > self.pusher_radius + self.START_CLEARANCE:
                break
        self.data.qpos[self.block_qpos_adr] = pose
        self.data.qpos[self.pusher_qpos_adr] = pusher
        self.data.ctrl[:] = pusher

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action * self.WORKSPACE

    def _is_success(self) -> bool:
        pos_err, ang_err = self.pose_error()
        return pos_err < self.POS_TOL and ang_err < self.ANGLE_TOL

    def _dense_reward(self) -> float:
        if self._is_success():
            return 1.0
        pos_err, ang_err = self.pose_error()
        return -(min(pos_err / self.POS_SCALE, 1.0) + ang_err / np.pi) / 2
