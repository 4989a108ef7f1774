"""The scripted PushT expert: a sampling planner over push primitives.

A primitive pushes the block at one point of its outline: the pusher goes around the block to a
start point just outside that point, then pushes through it along the inward normal turned by a
small angle. Before each primitive the expert tries every candidate (contact point × direction)
on its own copy of the MuJoCo state, never the env's, and scores every prefix of every push by
the pose error it leaves plus the time it takes, travel included. It then draws one of the
near-best at random from its own generator: pushes that do about as well from either side of the
T both occur, and so do both ways around the block when they are about as long. That is the
multimodality Push-T demonstrations are known for. It re-plans after every primitive, which
corrects the small differences between the plan and what happens.

Repositioning never disturbs the block: the pusher backs off, then goes straight where that
clears the block and otherwise around it on a loop that hugs the T at a safe distance (a fixed
circle would leave the table when the block is near its edge), and enters along the push
direction. The block is quasi-static (it stops when let go), so the plan, simulated from the
block at rest, is what the real push does.

``noise`` makes mixed-quality data: Gaussian noise on every action (std = ``noise`` in action
units, 1 unit = 0.25 m) and a wider random choice that admits plans worse by up to
``noise × DEGRADE`` cost units.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import mujoco
import numpy as np

from envs.pusht import PushTEnv, to_block_frame, to_world_frame

_BLOCK_FRAME = np.zeros(3)  # the pose whose frame is the block's own


@dataclass(frozen=True)
class Push:
    """An executed push: where it touched the block (block frame at planning time), its world
    direction, and how many control steps it pushed for."""

    contact: np.ndarray
    direction: np.ndarray
    steps: int


class _Loop:
    """A closed path around the block, in the block frame, that keeps ``clearance`` between the
    pusher and the T: at each of ``n`` angles about the centre of mass, just beyond the farthest
    point (along that ray) where the pusher would come closer. Each point takes the largest such
    radius of its neighbours too, so that straight moves between nearby points stay clear."""

    def __init__(self, env: PushTEnv, clearance: float, n: int = 180, widen: int = 3) -> None:
        angles = 2 * np.pi * np.arange(n) / n
        units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        reach = np.arange(0.0, 0.25, 0.001)
        rays = reach[None, :, None] * units[:, None, :]
        blocked = env.block_distance(rays, _BLOCK_FRAME) <= env.pusher_radius + clearance
        radius = np.where(blocked, reach[None], 0.0).max(axis=1) + 0.002  # + ray sampling
        radius = np.max([np.roll(radius, s) for s in range(-widen, widen + 1)], axis=0)
        self.n = n
        self.points = radius[:, None] * units
        steps = np.linalg.norm(np.roll(self.points, -1, axis=0) - self.points, axis=1)
        self.cumulative = np.concatenate([[0.0], np.cumsum(steps)])  # length from point 0

    def index(self, local: np.ndarray) -> np.ndarray:
        """The loop point at the angle of each block-frame point (..., 2)."""
        angle = np.arctan2(local[..., 1], local[..., 0])
        return np.round(angle / (2 * np.pi) * self.n).astype(int) % self.n

    def lengths(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Length along the loop from point i to point j, counter-clockwise and clockwise."""
        total = self.cumulative[-1]
        ccw = (self.cumulative[j] - self.cumulative[i]) % total
        return ccw, total - ccw

    def path(self, i: int, j: int, ccw: bool) -> np.ndarray:
        """The loop's points from i to j (both included), going the given way."""
        span = (j - i) % self.n if ccw else (i - j) % self.n
        return self.points[(i + (1 if ccw else -1) * np.arange(span + 1)) % self.n]


class PushTExpert:
    """Plans a push, executes it, plans the next one; see the module docstring."""

    CONTACT_SPACING = 0.015  # metres between candidate contact points along the outline
    TURNS = (-0.5, -0.25, 0.0, 0.25, 0.5)  # push directions about the inward normal (radians)
    GAP = 0.008  # pusher-to-outline clearance where a push starts
    ENTRY = 0.02  # the pusher lines up this far behind the start point, then moves in
    CLEARANCE = 0.006  # least pusher-to-outline clearance while repositioning
    LOOP_CLEARANCE = 0.012  # of the loop around the block; more, as moves cut its corners
    PUSH_STEP = 0.02  # metres per control step while pushing (0.2 m/s)
    PUSH_LENGTH = 0.1  # the longest push tried; every shorter prefix is scored too
    TRAVEL_STEP = 0.04  # metres per control step while repositioning (0.4 m/s)
    STEP_COST = 0.1  # cost units (one tolerance's worth of pose error) per control step
    NEAR_BEST = 0.2  # plans that reach >= 80% of the best plan's gain are "about as good"
    SIDE_TIE = 0.5  # either side of the T when its best gain is >= 50% of the other's
    TIE = 0.2  # both ways around the block are taken when their lengths are within 20%
    DEGRADE = 10.0  # cost units of slack in the random choice per unit of noise

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.pushes: list[Push] = []  # this episode's, to study the modes of the demos
        self._targets: list[np.ndarray] = []
        self._sim: mujoco.MjData | None = None
        self._loop: _Loop | None = None
        self._candidates: dict[str, np.ndarray] = {}

    def reset(self, env: PushTEnv) -> None:
        self.pushes = []
        self._targets = []
        self._sim = mujoco.MjData(env.model)
        self._loop = _Loop(env, self.LOOP_CLEARANCE)
        self._candidates = self._make_candidates(env)

    def act(self, env: PushTEnv) -> np.ndarray:
        if not self._targets:
            self._targets = self._plan(env)
        action = self._targets.pop(0) / env.WORKSPACE
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0)

    # ---- candidates, in the block frame (the same for every plan) ----------------------------
    def _make_candidates(self, env: PushTEnv) -> dict[str, np.ndarray]:
        """Contact points on the T's outline × push directions, with the start and entry points
        of each push, in the block frame. Kept where the pusher fits at the start (not in a
        corner of the T) and can move in from the entry point and from the loop."""
        r = env.pusher_radius
        contacts, normals = [], []
        for centre, half in env.block_boxes:
            for axis in range(2):
                for sign in (-1.0, 1.0):
                    normal = np.eye(2)[axis] * sign
                    side = 2 * half[1 - axis]
                    n = max(1, int(round(side / self.CONTACT_SPACING)))
                    points = np.repeat((centre + half * normal)[None], n, axis=0)
                    points[:, 1 - axis] += (np.arange(n) + 0.5) / n * side - half[1 - axis]
                    # Only on the outline of the T, not where the bar and the stem meet.
                    outside = env.block_distance(points + 1e-4 * normal, _BLOCK_FRAME) > 0
                    contacts.append(points[outside])
                    normals.append(np.repeat(normal[None], outside.sum(), axis=0))
        contact, normal = np.concatenate(contacts), np.concatenate(normals)

        turns = np.array(self.TURNS)
        contact = np.repeat(contact, len(turns), axis=0)
        normal = np.repeat(normal, len(turns), axis=0)
        turn = np.tile(turns, len(contact) // len(turns))
        cos, sin = np.cos(turn)[:, None], np.sin(turn)[:, None]
        direction = -(cos * normal + sin * normal[:, ::-1] * np.array([-1.0, 1.0]))
        start = contact + normal * r - direction * self.GAP / cos
        entry = start - direction * self.ENTRY
        from_loop = self._loop.points[self._loop.index(entry)]
        moves_in = self._clear(env, _BLOCK_FRAME, entry, start, r + 0.7 * self.GAP)
        fits = moves_in & self._clear(env, _BLOCK_FRAME, from_loop, entry, r + self.CLEARANCE)
        return {
            "contact": contact[fits],
            "direction": direction[fits],
            "start": start[fits],
            "entry": entry[fits],
        }

    # ---- planning ----------------------------------------------------------------------------
    def _cost(self, env: PushTEnv, pose: np.ndarray) -> float:
        """Pose error in units of the success tolerances (2 cm ~ 10 degrees)."""
        pos_err, ang_err = env.pose_error(pose)
        return pos_err / env.POS_TOL + ang_err / env.ANGLE_TOL

    def _plan(self, env: PushTEnv) -> list[np.ndarray]:
        """Pusher targets for the next primitive: back off, get there, push."""
        pose = env.block_pose()
        cand = self._candidates
        start = to_world_frame(cand["start"], pose)
        entry = to_world_frame(cand["entry"], pose)
        direction = to_world_frame(cand["direction"], pose * [0.0, 0.0, 1.0])
        limit = env.WORKSPACE  # the pusher's centre can go anywhere the actuators reach
        usable = np.all(np.abs(entry) < limit, axis=1) & np.all(np.abs(start) < limit, axis=1)

        back_off = self._back_off(env, pose)
        here = back_off[-1] if back_off else env.pusher_pos()
        straight = self._clear(env, pose, here, entry, env.pusher_radius + self.CLEARANCE)
        around = self._around_lengths(pose, here, entry)
        travel = np.where(straight, np.linalg.norm(entry - here, axis=1), around)
        way_steps = len(back_off) + np.ceil(travel / self.TRAVEL_STEP) + 2  # + move in, settle

        options = []  # (score, candidate, push steps)
        state = env.get_state()
        for i in np.flatnonzero(usable):
            for k, cost in self._simulate(env, state, start[i], direction[i]):
                score = -np.inf if cost is None else cost + self.STEP_COST * (way_steps[i] + k)
                options.append((score, i, k))
        if not options:  # every push would start off the table (the block is at its edge)
            return [env.pusher_pos()]
        _, i, k = options[self._choose(env, pose, options)]

        self.pushes.append(Push(cand["contact"][i].copy(), direction[i].copy(), k))
        if straight[i]:
            way = _line(here, entry[i], self.TRAVEL_STEP)
        else:
            way = self._go_around(env, pose, here, entry[i])
        push = [start[i] + direction[i] * self.PUSH_STEP * j for j in range(1, k + 1)]
        return [np.clip(t, -limit, limit) for t in back_off + way + [start[i]] * 2 + push]

    def _choose(
        self, env: PushTEnv, pose: np.ndarray, options: list[tuple[float, int, int]]
    ) -> int:
        """Index of the option to execute: a random one of the near-best.

        First a side of the T (left or right of its axis of symmetry): the best plan's, or
        either at random when the best plan on the other side gains nearly as much. Then any
        plan on that side within ``NEAR_BEST`` of its best gain (more with noise).
        """
        scores = np.array([score for score, _, _ in options])
        if not np.isfinite(scores.min()):  # a push reaches success: take it
            return int(scores.argmin())
        sides = np.sign(self._candidates["contact"][[i for _, i, _ in options], 0])
        now = self._cost(env, pose)
        gains = {s: now - scores[sides == s].min() for s in (-1.0, 1.0) if np.any(sides == s)}
        side = max(gains, key=gains.get)
        if len(gains) == 2 and min(gains.values()) >= self.SIDE_TIE * max(gains[side], 1e-9):
            side = (-1.0, 1.0)[self.rng.integers(2)]
        best = scores[sides == side].min()
        slack = self.NEAR_BEST * max(gains[side], 0.0) + self.noise * self.DEGRADE
        pool = np.flatnonzero((sides == side) & (scores <= best + slack))
        return int(pool[self.rng.integers(len(pool))])

    def _simulate(
        self, env: PushTEnv, state: np.ndarray, start: np.ndarray, direction: np.ndarray
    ) -> Iterator[tuple[int, float | None]]:
        """Yield (steps, cost) after each step of a push, with cost None where it succeeds.

        Runs on the expert's own MjData from a copy of the env's state, with the pusher put at
        the start point at rest (the block is at rest already: it stops when let go).
        """
        sim = self._sim
        mujoco.mj_setState(env.model, sim, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        sim.qvel[:] = 0.0
        sim.qpos[env.pusher_qpos_adr] = start
        for k in range(1, int(np.ceil((self.GAP + self.PUSH_LENGTH) / self.PUSH_STEP)) + 1):
            sim.ctrl[:] = start + direction * self.PUSH_STEP * k
            mujoco.mj_step(env.model, sim, nstep=env.n_substeps)
            pose = sim.qpos[env.block_qpos_adr]
            pos_err, ang_err = env.pose_error(pose)
            if pos_err < env.POS_TOL and ang_err < env.ANGLE_TOL:
                yield k, None
                return
            yield k, self._cost(env, pose)

    # ---- getting around the block ------------------------------------------------------------
    def _clear(
        self, env: PushTEnv, pose: np.ndarray, a: np.ndarray, b: np.ndarray, clearance: float
    ) -> np.ndarray:
        """Whether the pusher can move straight from a to b (..., 2) keeping ``clearance``."""
        a, b = np.broadcast_arrays(a, b)
        points = a[..., None, :] + (b - a)[..., None, :] * np.linspace(0, 1, 12)[:, None]
        return env.block_distance(points, pose).min(axis=-1) > clearance

    def _back_off(self, env: PushTEnv, pose: np.ndarray) -> list[np.ndarray]:
        """Targets that take the pusher ``CLEARANCE`` away from the block, straight away from
        its nearest point, when it is closer (as it is after a push)."""
        here = env.pusher_pos()
        gap = env.block_distance(here, pose) - env.pusher_radius
        if gap >= self.CLEARANCE:
            return []
        eps = 1e-4  # the direction away from the nearest point: the distance's gradient
        d = env.block_distance(here + eps * np.array([[1, 0], [-1, 0], [0, 1], [0, -1]]), pose)
        grad = np.array([d[0] - d[1], d[2] - d[3]])
        away = grad / max(float(np.linalg.norm(grad)), 1e-9)
        return _line(here, here + away * (2 * self.CLEARANCE - gap), self.TRAVEL_STEP)

    def _around_lengths(self, pose: np.ndarray, here: np.ndarray, entry: np.ndarray) -> np.ndarray:
        """Length of the shorter way around the block from ``here`` to each entry point."""
        local_here, local_entry = to_block_frame(here, pose), to_block_frame(entry, pose)
        i, j = self._loop.index(local_here), self._loop.index(local_entry)
        ccw, cw = self._loop.lengths(i, j)
        return (
            np.linalg.norm(self._loop.points[i] - local_here)
            + np.minimum(ccw, cw)
            + np.linalg.norm(self._loop.points[j] - local_entry, axis=-1)
        )

    def _go_around(
        self, env: PushTEnv, pose: np.ndarray, here: np.ndarray, entry: np.ndarray
    ) -> list[np.ndarray]:
        """Targets from ``here`` around the block to ``entry`` on the loop, at most one travel
        step apart; either way round when the two are about as long."""
        i = int(self._loop.index(to_block_frame(here, pose)))
        j = int(self._loop.index(to_block_frame(entry, pose)))
        ccw, cw = self._loop.lengths(i, j)
        go_ccw = ccw < cw
        if abs(ccw - cw) < self.TIE * max(ccw, cw):
            go_ccw = bool(self.rng.random() < 0.5)
        loop = to_world_frame(self._loop.path(i, j, go_ccw), pose)
        return self._resample(env, pose, np.concatenate([[here], loop, [entry]]))

    def _resample(self, env: PushTEnv, pose: np.ndarray, path: np.ndarray) -> list[np.ndarray]:
        """Points along a polyline, one travel step apart, where the straight move between
        two of them keeps clear of the block (else the polyline's own vertices)."""
        targets, current, i = [], path[0], 0
        while i < len(path) - 1:
            j = i + 1
            while (
                j + 1 < len(path)
                and np.linalg.norm(path[j + 1] - current) <= self.TRAVEL_STEP
                and self._clear(env, pose, current, path[j + 1], env.pusher_radius)
            ):
                j += 1
            targets += _line(current, path[j], self.TRAVEL_STEP)
            current, i = path[j], j
        return targets


def _line(a: np.ndarray, b: np.ndarray, step: float) -> list[np.ndarray]:
    """Points from a (excluded) to b (included), at most ``step`` apart."""
    n = int(np.ceil(np.linalg.norm(b - a) / step))
    return [a + (b - a) * j / n for j in range(1, n + 1)]
