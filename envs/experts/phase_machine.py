"""The phase machine that the waypoint experts share (own gripper tasks and robosuite's).

An expert lists its phases for the current state (approach, descend, close, lift, ...) and
walks through them: it moves on when the phase is reached, and starts over when the object is
dropped while carried or a phase takes too long. How a phase is reached, how a drop is seen and
how the action is formed are each task family's own.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import numpy as np

PhaseT = TypeVar("PhaseT")


class PhaseMachineExpert(Generic[PhaseT]):
    """Base class: ``noise`` and ``seed`` as every expert takes them, the phase counters, and
    the grasp point's random offset (up to ``noise`` x ``GRASP_SPREAD`` metres in x and y)."""

    MAX_PHASE_STEPS = 60
    GRASP_SPREAD = 0.02  # metres of grasp offset per unit of noise
    CARRY_PHASES: tuple[str, ...] = ()

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._phase = 0
        self._steps_in_phase = 0
        self._grasp_offset = np.zeros(3)

    def reset(self, env: Any) -> None:
        self._phase = 0
        self._steps_in_phase = 0
        offset_xy = self.rng.uniform(-1.0, 1.0, 2) * self.noise * self.GRASP_SPREAD
        self._grasp_offset = np.array([offset_xy[0], offset_xy[1], 0.0])

    # ---- what each task family defines -----------------------------------------------------
    def phases(self, env: Any) -> list[PhaseT]:
        raise NotImplementedError

    def _reached(self, env: Any, phase: PhaseT) -> bool:
        raise NotImplementedError

    def _dropped(self, env: Any, phases: list[PhaseT]) -> bool:
        raise NotImplementedError

    # ---- the machine -----------------------------------------------------------------------
    def _step_phase(self, env: Any) -> PhaseT:
        """The phase to act on this step, after starting over or moving on as due."""
        phases = self.phases(env)
        if self._dropped(env, phases) or self._steps_in_phase > self.MAX_PHASE_STEPS:
            self._phase, self._steps_in_phase = 0, 0
        phase = phases[min(self._phase, len(phases) - 1)]
        if self._reached(env, phase) and self._phase < len(phases) - 1:
            self._phase += 1
            self._steps_in_phase = 0
            phase = phases[self._phase]
        self._steps_in_phase += 1
        return phase

    def _noisy(self, move: np.ndarray) -> np.ndarray:
        """The xyz action with the expert's Gaussian noise, clipped to [-1, 1]."""
        if self.noise > 0:
            move = np.clip(move + self.rng.normal(0.0, self.noise, 3), -1.0, 1.0)
        return move
