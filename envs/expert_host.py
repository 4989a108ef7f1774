"""The scripted-expert hook shared by every task env (robopolicy's own and the robosuite adapter).

The expert lives inside the env so that it works in vector-env worker processes, where only the
env sees the privileged state: callers ask for ``expert_action()`` through ``VectorEnv.call``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np


class ExpertHost:
    """Mixin for a ``gym.Env`` with an ``expert_class`` ("module:Class") whose experts have
    ``__init__(noise, seed)``, ``reset(env)`` and ``act(env)``. The env's ``reset`` must call
    ``_start_expert_episode()`` when ``_expert_noise`` is set."""

    expert_class: str
    _expert: Any = None
    _expert_noise: float | None = None

    def attach_expert(self, noise: float = 0.0) -> None:
        """Drive this env's scripted expert from now on (takes effect at the next reset).

        Its randomness is drawn from the env's seeded generator, so a seed fixes both the
        initial state and the expert's behaviour.
        """
        if noise < 0:
            raise ValueError(f"expert noise must be >= 0, got {noise}")
        if not self.expert_class:
            raise ValueError(f"{type(self).__name__} has no scripted expert")
        self._expert_noise = float(noise)

    def expert_action(self) -> np.ndarray:
        if self._expert is None:
            raise RuntimeError("no expert: call attach_expert() and then reset() first")
        return np.asarray(self._expert.act(self), dtype=np.float32)

    def _start_expert_episode(self) -> None:
        module_name, class_name = self.expert_class.split(":")
        expert_type = getattr(importlib.import_module(module_name), class_name)
        seed = int(self.np_random.integers(2**31))
        self._expert = expert_type(noise=self._expert_noise, seed=seed)
        self._expert.reset(self)
