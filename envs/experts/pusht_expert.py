"""Scripted PushT expert: a sampling planner over push primitives, simulated on state copies.

A primitive is: put the pusher just outside a point of the T's outline, then push through that
point along the inward normal (turned by a small angle) for a given length. Before each
primitive the expert simulates every candidate on a copy of the current MuJoCo state (never
the real one) and keeps the ones that bring the block closest to the target pose; it then picks
one of the near-best at random, so equally good pushes from either side of the block both
appear in the data (PushT's multimodality). To get into position it travels around the block
on a circle that clears it, so repositioning never disturbs the block; then it pushes, then
plans again.

``noise`` adds Gaussian noise (std = ``noise`` in action units; 1 unit = 0.25 m) to every action
and widens the random choice to worse plans, for mixed-quality data.
"""

from __future__ import annotations

from collections import deque

import mujoco
import numpy as np

from envs.pusht import PushTEnv, wrap_angle

# Points of the T's outline in the block frame, with outward normals.
_OUTLINE = [
    *[((x, 0.045), (0.0, 1.0)) for x in (-0.045, -0.015, 0.015, 0.045)],  # top of the bar
    ((-0.06, 0.03), (-1.0, 0.0)),  # bar ends
    ((0.06, 0.03), (1.0, 0.0)),
    ((-0.04, 0.015), (0.0, -1.0)),  # under the bar
    ((0.04, 0.015), (0.0, -1.0)),
    *[((-0.015, y), (-1.0, 0.0)) for y in (-0.06, -0.03)],  # stem sides
    *[((0.015, y), (1.0, 0.0)) for y in (-0.06, -0.03)],
    ((0.0, -0.075), (0.0, -1.0)),  # stem end
]
_TURNS = (-0.4, 0.0, 0.4)  # push direction relative to the inward normal (radians)
_LENGTHS = (0.02, 0.05, 0.1)  # push lengths (metres)


class PushTExpert:
    TRAVEL_STEP = 0.02  # metres per control step while repositioning
    PUSH_STEP = 0.01  # metres per control step while pushing
    GAP = 0.006  # distance from the outline at which a push starts
    CLEARANCE = PushTEnv.BLOCK_RADIUS + PushTEnv.PUSHER_RADIUS + 0.012
    NEAR_BEST = 0.05  # plans within 5% of the best cost count as equally good

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._waypoints: deque[np.ndarray] = deque()
        self._scratch: mujoco.MjData | None = None
        self.first_push_side: float | None = None  # sign of the first contact's x (block frame)

    def reset(self, env: PushTEnv) -> None:
        self._waypoints.clear()
        self._scratch = mujoco.MjData(env.model)
        self.first_push_side = None

    def act(self, env: PushTEnv) -> np.ndarray:
        if not self._waypoints:
            self._waypoints.extend(self._plan(env))
        target = self._waypoints.popleft()
        action = target / env.WORKSPACE
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ---- planning ---------------------------------------------------------------------------
    def _cost(self, env: PushTEnv, pose: np.ndarray) -> float:
        pos_err, ang_err = env.pose_error(pose)
        return pos_err / env.POS_TOL + ang_err / env.ANGLE_TOL

    def _plan(self, env: PushTEnv) -> list[np.ndarray]:
        pose = env.block_pose()
        scored = []
        for point, normal in _OUTLINE:
            for turn in _TURNS:
                for length in _LENGTHS:
                    push = _primitive(pose, np.array(point), np.array(normal), turn, length, self)
                    if push is None:
                        continue
                    cost = self._cost(env, self._simulate(env, push))
                    scored.append((cost, point[0], push))
        if not scored:  # nowhere to push from: step back towards the centre and re-plan
            return [np.clip(env.pusher_pos() * 0.8, -0.2, 0.2)]
        scored.sort(key=lambda item: item[0])
        best = scored[0][0]
        pool = [s for s in scored if s[0] <= best * (1 + self.NEAR_BEST) + 1e-9]
        if self.noise > 0:
            pool = scored[: max(len(pool), int(round(self.noise * 40)))]
        _, side, push = pool[self.rng.integers(len(pool))]
        if self.first_push_side is None:
            self.first_push_side = float(np.sign(side))
        return self._route(env, pose, push)

    def _simulate(self, env: PushTEnv, push: list[np.ndarray]) -> np.ndarray:
        """Block pose after executing ``push`` from its start point, on a copy of the state."""
        sim = self._scratch
        sim.qpos[:] = env.data.qpos
        sim.qvel[:] = 0.0
        sim.qpos[env._pusher] = push[0]
        for target in push:
            sim.ctrl[:] = target
            mujoco.mj_step(env.model, sim, nstep=env.n_substeps)
        return sim.qpos[env._block].copy()

    def _route(self, env: PushTEnv, pose: np.ndarray, push: list[np.ndarray]) -> list[np.ndarray]:
        """Waypoints: back off, around the block on a clearing circle, in, then the push."""
        centre = pose[:2]
        here = env.pusher_pos()
        start = push[0]
        route: list[np.ndarray] = []
        if np.linalg.norm(here - centre) < self.CLEARANCE:
            away = _unit(here - centre)
            route += _line(here, centre + away * self.CLEARANCE, self.TRAVEL_STEP)
            here = route[-1]
        a0 = np.arctan2(*(here - centre)[::-1])
        a1 = np.arctan2(*(start - centre)[::-1])
        sweep = wrap_angle(a1 - a0)
        radius = max(np.linalg.norm(here - centre), self.CLEARANCE)
        n = max(1, int(np.ceil(abs(sweep) * radius / self.TRAVEL_STEP)))
        for k in range(1, n + 1):
            angle = a0 + sweep * k / n
            route.append(centre + radius * np.array([np.cos(angle), np.sin(angle)]))
        route += _line(route[-1], start, self.TRAVEL_STEP)
        route += push
        return [np.clip(p, -0.24, 0.24) for p in route]


def _primitive(pose, point, normal, turn, length, expert) -> list[np.ndarray] | None:
    """World-frame pusher targets for one push, or None if it starts off the table."""
    x, y, theta = pose
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    contact = np.array([x, y]) + rotation @ point
    outward = rotation @ normal
    c, s = np.cos(turn), np.sin(turn)
    direction = -np.array([c * outward[0] - s * outward[1], s * outward[0] + c * outward[1]])
    start = contact + outward * (PushTEnv.PUSHER_RADIUS + expert.GAP)
    if np.any(np.abs(start) > 0.235):
        return None
    steps = int(np.ceil((length + expert.GAP) / expert.PUSH_STEP))
    push = [start, start.copy()]  # arrive and settle
    push += [start + direction * expert.PUSH_STEP * k for k in range(1, steps + 1)]
    push.append(push[-1].copy())  # let the block come to rest
    return push


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    return v / norm if norm > 1e-9 else np.array([1.0, 0.0])


def _line(a: np.ndarray, b: np.ndarray, step: float) -> list[np.ndarray]:
    n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
    return [a + (b - a) * k / n for k in range(1, n + 1)]
