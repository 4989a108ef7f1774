"""Scripted waypoint experts for the gripper tasks (Lift, PickPlace).

Each expert walks through phases (approach, descend, close, lift, ...) with a proportional
controller on the end-effector position, using the env's privileged state. A dropped cube sends
it back to the approach phase, so at ``noise=0`` it recovers from its own rare slips.

``noise`` makes data of mixed quality: Gaussian noise on the xyz action (std = ``noise``, in
action units) and a grasp point offset by up to ``noise`` × 2 cm, which sometimes misses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.experts.phase_machine import PhaseMachineExpert
from envs.gripper import GripperTaskEnv

OPEN, CLOSED = -1.0, 1.0


@dataclass
class Phase:
    """Move the grip site to ``target`` with the gripper at ``grip``; done within ``tol``
    metres, or after ``hold`` steps when ``hold`` is set (for closing and opening)."""

    name: str
    target: np.ndarray
    grip: float
    tol: float = 0.006
    hold: int = 0


class GripperExpert(PhaseMachineExpert[Phase]):
    """Base class: subclasses list the phases for the current state."""

    GAIN = 1.5
    HOVER = 0.07  # metres above the cube's centre when approaching

    def _pick_phases(self, env: GripperTaskEnv) -> list[Phase]:
        cube = env.cube_pos() + self._grasp_offset
        return [
            Phase("approach", cube + [0.0, 0.0, self.HOVER], OPEN, tol=0.008),
            Phase("descend", cube, OPEN, tol=0.004),
            Phase("close", cube, CLOSED, hold=6),
        ]

    def act(self, env: GripperTaskEnv) -> np.ndarray:
        phase = self._step_phase(env)
        error = phase.target - env.eef_pos()
        move = self._noisy(np.clip(self.GAIN * error / env.MAX_DELTA, -1.0, 1.0))
        return np.append(move, phase.grip).astype(np.float32)

    def _reached(self, env: GripperTaskEnv, phase: Phase) -> bool:
        if phase.hold:
            return self._steps_in_phase >= phase.hold
        return float(np.max(np.abs(phase.target - env.eef_pos()))) < phase.tol

    def _dropped(self, env: GripperTaskEnv, phases: list[Phase]) -> bool:
        """After the grasp, the cube is no longer between the fingers."""
        names = [p.name for p in phases]
        carrying = self._phase > names.index("close") and names[self._phase] in self.CARRY_PHASES
        return carrying and not env.grasping()


class LiftExpert(GripperExpert):
    """Approach, descend, close, lift."""

    CARRY_PHASES = ("lift",)

    def phases(self, env: GripperTaskEnv) -> list[Phase]:
        pick = self._pick_phases(env)
        lift = pick[1].target + [0.0, 0.0, 0.1]
        return [*pick, Phase("lift", lift, CLOSED, tol=0.0)]


class PickPlaceExpert(GripperExpert):
    """Approach, descend, close, lift, carry over the target, lower, open, retreat."""

    CARRY_PHASES = ("lift", "carry", "lower")
    CARRY_HEIGHT = 0.1

    def phases(self, env: GripperTaskEnv) -> list[Phase]:
        pick = self._pick_phases(env)
        target = np.append(env.target_xy(), env.CUBE_HALF + 0.004)
        lifted = np.append(env.eef_pos()[:2], self.CARRY_HEIGHT)
        return [
            *pick,
            Phase("lift", lifted, CLOSED, tol=0.01),
            Phase("carry", np.append(target[:2], self.CARRY_HEIGHT), CLOSED, tol=0.004),
            Phase("lower", target, CLOSED, tol=0.003),
            Phase("open", target, OPEN, hold=5),
            Phase("retreat", target + [0.0, 0.0, 0.08], OPEN, tol=0.0),
        ]
