"""The robot side: a ``Controller`` interface and a fixed-rate control loop fed by the server.

Time is cut into control ticks of ``1 / control_hz`` seconds. At tick k the loop reads an
observation; when no action is scheduled for tick k it asks the server for a chunk planned
from that observation, whose i-th action is due at tick k + i::

    tick        k     k+1    k+2    k+3  ...
    obs         o_k
    request     |--- inference ---|            (reply arrives during tick k+1)
    chunk       a_k   a_k+1  a_k+2  a_k+3      a_k is late: dropped; a_k+1 goes out at once
    sent              a_k+1  a_k+2  a_k+3      tick k missed its deadline

Actions whose tick has passed are dropped, never sent late, and every tick without a fresh
action counts as a missed deadline (the robot holds its last command). In ``act`` mode the
server runs its own execution scheme (e.g. RTI) and answers one action per tick.

The loop guards its robot as the server guards its policy (``robopolicy.inference.guard``):
an observation that is not finite as float32 (what the server computes in) is not sent, and a
reply holding NaN or inf is never sent to the robot: the planned actions are dropped and
``NonFiniteActionError`` ends the run.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch

from robopolicy.deploy.client import PolicyClient
from robopolicy.inference.guard import ObsGuard, ObsGuardConfig, check_actions


class Controller(Protocol):
    """What a robot (or a simulator standing in for one) offers the control loop."""

    control_hz: float

    def connect(self) -> None: ...

    def get_observation(self) -> dict[str, np.ndarray]: ...

    def send_action(self, action: np.ndarray) -> None: ...

    def disconnect(self) -> None: ...


@dataclass
class LoopStats:
    ticks: int = 0
    actions_sent: int = 0
    missed_deadlines: int = 0  # ticks that had no on-time action
    late_dropped: int = 0  # planned actions discarded because their tick had passed
    requests: int = 0
    rtt_ms: list[float] = field(default_factory=list)  # round trip per request (client side)
    server_ms: list[float] = field(default_factory=list)  # inference time reported by server


class ControlLoop:
    """Runs a ``Controller`` at its control rate with actions from a ``PolicyClient``."""

    def __init__(
        self,
        client: PolicyClient,
        mode: str = "chunk",
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if mode not in ("chunk", "act"):
            raise ValueError(f"control mode {mode!r} not in ('chunk', 'act')")
        meta = client.metadata
        self.client, self.mode, self.clock, self.sleep = client, mode, clock, sleep
        self.obs_horizon = int(meta["obs_horizon"])
        self.action_horizon = int(meta["action_horizon"])
        self.guard = ObsGuard(None, ObsGuardConfig())  # no statistics here: finiteness only

    def run(self, controller: Controller, max_ticks: int, done: Callable[[], bool]) -> LoopStats:
        """Control until ``done()`` or ``max_ticks``; one episode (the server is reset first)."""
        period = 1.0 / controller.control_hz
        stats = LoopStats()
        history: deque[dict[str, np.ndarray]] = deque(maxlen=self.obs_horizon)
        schedule: deque[tuple[int, np.ndarray]] = deque()  # (tick, action), ticks increasing
        self._request(stats, {"type": "reset"})
        start = self.clock()
        tick = 0
        while tick < max_ticks and not done():
            wait = start + tick * period - self.clock()
            if wait > 0:
                self.sleep(wait)
            obs = controller.get_observation()
            self._check_observation(obs)
            if not history:  # an episode starts: pad with its first observation, as training
                history.extend([obs] * self.obs_horizon)
            else:
                history.append(obs)
            stats.late_dropped += _drop_before(schedule, tick)
            if not schedule:
                self._plan(obs, history, schedule, tick, stats)
            now_tick = math.floor((self.clock() - start) / period)
            stats.missed_deadlines += max(0, now_tick - tick)
            stats.late_dropped += _drop_before(schedule, now_tick)
            tick = max(tick, now_tick)
            if schedule and schedule[0][0] == tick:
                controller.send_action(schedule.popleft()[1])
                stats.actions_sent += 1
            else:
                stats.missed_deadlines += 1
            stats.ticks = tick + 1
            tick += 1
        return stats

    def _plan(self, obs, history, schedule, tick: int, stats: LoopStats) -> None:
        if self.mode == "act":
            reply = self._request(stats, {"type": "act", "obs": obs})
            check_actions(np.asarray(reply["action"]))
            schedule.append((tick, reply["action"]))
            return
        stacked = {key: np.stack([o[key] for o in history]) for key in obs}
        actions = self._request(stats, {"type": "chunk", "obs": stacked})["actions"]
        check_actions(np.asarray(actions[: self.action_horizon]), "action chunk")
        for i, action in enumerate(actions[: self.action_horizon]):
            schedule.append((tick + i, action))

    def _check_observation(self, obs: dict[str, np.ndarray]) -> None:
        """Every observation, as it may be sent later in a chunk request's history."""
        arrays = {key: np.asarray(value) for key, value in obs.items()}
        self.guard.check_obs(
            {k: torch.as_tensor(v).float() for k, v in arrays.items() if v.dtype != np.uint8}
        )

    def _request(self, stats: LoopStats, message: dict) -> dict:
        reply = self.client.request(message)
        if message["type"] != "reset":
            stats.requests += 1
            stats.rtt_ms.append(self.client.last_rtt_ms)
            stats.server_ms.append(self.client.last_server_ms)
        return reply


def _drop_before(schedule: deque[tuple[int, np.ndarray]], tick: int) -> int:
    dropped = 0
    while schedule and schedule[0][0] < tick:
        schedule.popleft()
        dropped += 1
    return dropped


class SimController:
    """A MuJoCo task behind the ``Controller`` interface: the stand-in for a robot."""

    def __init__(self, env_id: str, env_kwargs: dict | None = None) -> None:
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self.env: gym.Env | None = None
        self.control_hz = 0.0

    def connect(self) -> None:
        import robopolicy  # noqa: F401  (registers the tasks)

        self.env = gym.make(self.env_id, **self.env_kwargs)
        self.control_hz = float(self.env.unwrapped.control_hz)

    def start_episode(self, seed: int) -> None:
        self._obs, _ = self.env.reset(seed=seed)
        self.success, self.over, self.steps = False, False, 0

    def get_observation(self) -> dict[str, np.ndarray]:
        return self._obs

    def send_action(self, action: np.ndarray) -> None:
        self._obs, _, terminated, truncated, info = self.env.step(action)
        self.success = self.success or bool(info.get("is_success", False))
        self.over = terminated or truncated
        self.steps += 1

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
