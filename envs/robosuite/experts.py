"""Scripted experts for the robosuite tasks: waypoints under operational-space control.

Each expert reads privileged object poses from the robosuite sim and walks through phases
(approach, descend, close, lift, carry, ...). Every step it turns the error between the gripper
site and the phase's target pose into an OSC_POSE delta action: position error / 5 cm and the
axis-angle orientation error / 0.5 rad (the controller's output scales), times a gain. The
gripper is kept pointing down; only its yaw (the heading of the fingers' closing axis, the
grip site's local x axis) is steered. An object that falls out of the gripper while carried
sends the expert back to the first phase.

``noise`` makes data of mixed quality, as for robopolicy's own tasks: Gaussian noise on the xyz
action (std = ``noise``, in action units) and a grasp point offset by up to ``noise`` x 1 cm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from envs.experts.phase_machine import PhaseMachineExpert

OPEN, CLOSED = -1.0, 1.0
POS_SCALE, ROT_SCALE = 0.05, 0.5  # metres / radians per unit action (OSC_POSE output_max)


@dataclass
class Phase:
    """Move the grip site to ``target`` with closing-axis heading ``yaw`` and the gripper at
    ``grip``; done within ``tol`` metres (and ``yaw_tol`` radians), or after ``hold`` steps."""

    name: str
    target: np.ndarray
    yaw: float
    grip: float
    tol: float = 0.005
    yaw_tol: float = 0.1
    hold: int = 0


def wrap(angle: float, period: float) -> float:
    """``angle`` folded into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


def yaw_of(matrix: np.ndarray) -> float:
    """Heading of a frame's local x axis in the world xy plane."""
    return float(np.arctan2(matrix[1, 0], matrix[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """The grip-site frame pointing down (local z = world -z) with local x at heading ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


class RobosuiteExpert(PhaseMachineExpert[Phase]):
    """Base class: subclasses say what to pick (``grasp_point``) and where (``phases``)."""

    POS_GAIN = 4.0
    ROT_GAIN = 2.0
    MAX_PHASE_STEPS = 80
    GRASP_SPREAD = 0.01
    DROP_DISTANCE = 0.05  # the grasp point this far from the grip site: dropped

    def grasp_point(self, env) -> np.ndarray:
        """Where the fingers close on the object (world), before the noise offset."""
        raise NotImplementedError

    def act(self, env) -> np.ndarray:
        phase = self._step_phase(env)
        pos_error, rot_error = self._errors(env, phase)
        move = self._noisy(np.clip(self.POS_GAIN * pos_error / POS_SCALE, -1.0, 1.0))
        turn = np.clip(self.ROT_GAIN * rot_error / ROT_SCALE, -1.0, 1.0)
        return np.concatenate([move, turn, [phase.grip]]).astype(np.float32)

    def _reached(self, env, phase: Phase) -> bool:
        if phase.hold:
            return self._steps_in_phase >= phase.hold
        pos_error, rot_error = self._errors(env, phase)
        return (
            float(np.max(np.abs(pos_error))) < phase.tol
            and float(np.linalg.norm(rot_error)) < phase.yaw_tol
        )

    def _errors(self, env, phase: Phase) -> tuple[np.ndarray, np.ndarray]:
        """Position error (m) and orientation error (axis-angle, world frame) to the phase."""
        pos, rot = grip_site_pose(env)
        rot_error = Rotation.from_matrix(down_rotation(phase.yaw) @ rot.T).as_rotvec()
        return phase.target - pos, rot_error

    def _dropped(self, env, phases: list[Phase]) -> bool:
        name = phases[min(self._phase, len(phases) - 1)].name
        if name not in self.CARRY_PHASES:
            return False
        pos, _ = grip_site_pose(env)
        return float(np.linalg.norm(self.grasp_point(env) - pos)) > self.DROP_DISTANCE

    def nearest_yaw(self, env, yaw: float, period: float) -> float:
        """The heading equivalent to ``yaw`` (modulo ``period``) nearest the gripper's own."""
        current = yaw_of(grip_site_pose(env)[1])
        return current + wrap(yaw - current, period)


def grip_site_pose(env) -> tuple[np.ndarray, np.ndarray]:
    """World position and rotation matrix of the grip site (what OSC_POSE controls)."""
    sim = env.robosuite_env.sim
    site = env.robosuite_env.robots[0].eef_site_id["right"]
    return sim.data.site_xpos[site].copy(), sim.data.site_xmat[site].reshape(3, 3).copy()


def body_pose(env, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    sim = env.robosuite_env.sim
    return sim.data.body_xpos[body_id].copy(), sim.data.body_xmat[body_id].reshape(3, 3).copy()


class LiftExpert(RobosuiteExpert):
    """Approach above the cube with the fingers square to its faces, descend, close, lift."""

    CARRY_PHASES = ("lift",)
    HOVER = 0.08

    def grasp_point(self, env) -> np.ndarray:
        return body_pose(env, env.robosuite_env.cube_body_id)[0]

    def phases(self, env) -> list[Phase]:
        cube, cube_rot = body_pose(env, env.robosuite_env.cube_body_id)
        grasp = cube + self._grasp_offset
        yaw = self.nearest_yaw(env, yaw_of(cube_rot), np.pi / 2)
        return [
            Phase("approach", grasp + [0.0, 0.0, self.HOVER], yaw, OPEN, tol=0.01),
            Phase("descend", grasp, yaw, OPEN, tol=0.005),
            Phase("close", grasp, yaw, CLOSED, hold=8),
            Phase("lift", grasp + [0.0, 0.0, 0.15], yaw, CLOSED, tol=0.0),
        ]


class CanExpert(RobosuiteExpert):
    """Pick the can from the top, lift it clear of the bin walls, carry it over its target
    quadrant of the other bin, lower, release, retreat upwards (success needs the gripper
    away from the can)."""

    CARRY_PHASES = ("lift", "carry", "lower")
    HOVER = 0.1
    CARRY_Z = 1.0  # world height of the grip site while carrying: clears both bins' walls
    RELEASE_Z = 0.95
    # Where to drop, relative to the target quadrant's centre: 4-6 cm towards the robot, where
    # the arm still reaches with the gripper pointing down (the centre is at its limit).
    DROP_SHIFT = np.array([-0.04, -0.06])
    GRASP_ABOVE_CENTRE = 0.015  # lower, and the fingertips meet the bin floor first

    def _can_id(self, env) -> int:
        rs = env.robosuite_env
        return rs.obj_body_id[rs.objects[rs.object_id].name]

    def grasp_point(self, env) -> np.ndarray:
        return body_pose(env, self._can_id(env))[0]

    def phases(self, env) -> list[Phase]:
        rs = env.robosuite_env
        grasp = self.grasp_point(env) + self._grasp_offset + [0.0, 0.0, self.GRASP_ABOVE_CENTRE]
        yaw = self.nearest_yaw(env, np.pi / 2, np.pi)  # a cylinder: any heading; keep it steady
        place = np.array(rs.target_bin_placements[rs.object_id][:2]) + self.DROP_SHIFT
        pos, _ = grip_site_pose(env)
        return [
            Phase("approach", grasp + [0.0, 0.0, self.HOVER], yaw, OPEN, tol=0.01),
            Phase("descend", grasp, yaw, OPEN, tol=0.006),
            Phase("close", grasp, yaw, CLOSED, hold=8),
            Phase("lift", np.append(pos[:2], self.CARRY_Z), yaw, CLOSED, tol=0.02),
            Phase("carry", np.append(place[:2], self.CARRY_Z), yaw, CLOSED, tol=0.01),
            Phase("lower", np.append(place[:2], self.RELEASE_Z), yaw, CLOSED, tol=0.01),
            Phase("open", np.append(place[:2], self.RELEASE_Z), yaw, OPEN, hold=6),
            Phase("retreat", np.append(place[:2], self.CARRY_Z), yaw, OPEN, tol=0.0),
        ]


class SquareExpert(RobosuiteExpert):
    """Grasp the square nut by its handle (fingers closing across it), lift it above the peg,
    turn it square to the peg and centre its hole over the peg, lower it down the peg, release
    and retreat. The carried nut turns and moves with the gripper, so the alignment targets
    are recomputed every step from the nut's own pose."""

    CARRY_PHASES = ("lift", "align", "lower")
    HOVER = 0.08
    CARRY_NUT_Z = 1.0  # nut centre while aligning: its underside clears the peg top (0.95)
    PLACE_NUT_Z = 0.85  # success needs the nut below table + 5 cm (0.87)
    NUT_HEADINGS = (np.pi / 2, np.pi, -np.pi / 2)  # handle to +y, to the robot (-x), to -y

    def _ids(self, env) -> tuple[int, int, int]:
        rs = env.robosuite_env
        nut = rs.nuts[rs.nut_id]
        handle = rs.sim.model.site_name2id(nut.important_sites["handle"])
        peg = rs.peg1_body_id if rs.nut_id == 0 else rs.peg2_body_id
        return rs.obj_body_id[nut.name], handle, peg

    def _square_yaw(self, env, nut_yaw: float) -> float:
        """The gripper heading that turns the carried nut square to the (axis-aligned) peg with
        its handle towards the robot or sideways, never away: over the peg with the handle
        away, the grip would be 5 cm beyond the Panda's reach."""
        gripper_yaw = yaw_of(grip_site_pose(env)[1])
        turns = [wrap(goal - nut_yaw, 2 * np.pi) for goal in self.NUT_HEADINGS]
        return gripper_yaw + min(turns, key=abs)

    def grasp_point(self, env) -> np.ndarray:
        _, handle, _ = self._ids(env)
        return env.robosuite_env.sim.data.site_xpos[handle].copy()

    def phases(self, env) -> list[Phase]:
        nut_id, _, peg_id = self._ids(env)
        nut, nut_rot = body_pose(env, nut_id)
        peg, _ = body_pose(env, peg_id)
        pos, _ = grip_site_pose(env)
        handle = self.grasp_point(env)
        grasp = handle + self._grasp_offset
        heading = np.arctan2(*(handle - nut)[1::-1])  # from the nut's centre to its handle
        grasp_yaw = self.nearest_yaw(env, heading + np.pi / 2, np.pi)
        square_yaw = self._square_yaw(env, yaw_of(nut_rot))
        over_peg = pos[:2] + (peg[:2] - nut[:2])  # grip site target that centres the nut
        lift_to = pos[2] + (self.CARRY_NUT_Z - nut[2])
        lower_to = pos[2] + (self.PLACE_NUT_Z - nut[2])
        return [
            Phase("approach", grasp + [0.0, 0.0, self.HOVER], grasp_yaw, OPEN, tol=0.01),
            Phase("descend", grasp, grasp_yaw, OPEN, tol=0.005),
            Phase("close", grasp, grasp_yaw, CLOSED, hold=8),
            Phase("lift", np.append(pos[:2], lift_to), grasp_yaw, CLOSED, tol=0.02, yaw_tol=1.0),
            Phase(
                "align", np.append(over_peg, lift_to), square_yaw, CLOSED, tol=0.003, yaw_tol=0.05
            ),
            Phase(
                "lower", np.append(over_peg, lower_to), square_yaw, CLOSED, tol=0.005, yaw_tol=0.1
            ),
            Phase("open", pos, square_yaw, OPEN, hold=6),
            Phase("retreat", pos + [0.0, 0.0, 0.1], square_yaw, OPEN, tol=0.0),
        ]
