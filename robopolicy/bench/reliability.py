"""``robopolicy bench reliability``: the policy server tried as a hostile user would.

Each section starts ``robopolicy serve`` in its own process on 127.0.0.1 and reports figures
plus a verdict (``ok``):

1. ``fuzz``: malformed frames (random bytes, truncated and bit-flipped requests, wrong types,
   keys, shapes and dtypes, lying array headers, deep nesting, text and oversize frames):
   how many, the kinds of reply, internal errors (must be 0), and whether the server still
   answers a valid request afterwards.
2. ``extreme_values``: finite observations that poison a network (float32 3e38, float64 1e300,
   int64 2**62, ...), in ``chunk`` and ``act`` mode, each followed by valid ``act`` steps, on a
   server with the observation guard refusing them and on one only warning (so the action
   guard alone stands): the number of non-finite actions sent (must be 0).
3. ``non_reading_clients``: clients that send without ever reading their replies; the server's
   RSS against the bound its per-client limits set, clients dropped, and a valid request
   answered afterwards.

Between 2 and 3, ``bc_resume`` and ``rl_resume`` (``RESUME_SECTIONS``): tiny ``train`` and
``finetune`` runs killed with SIGKILL after their first checkpoint and resumed with
``resume=<run>`` alone, compared tensor by tensor with uninterrupted twins (max |Δ| must be 0,
and no metrics row may be logged twice).

Without ``checkpoint=`` a small Lift checkpoint is trained here (a few demos, a few hundred
steps): what matters is a real normaliser and a real network, not a good policy.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.uri import parse_uri

from robopolicy.bench.deploy import _free_port, _history, _wait_until_up
from robopolicy.bench.jobs import local_only
from robopolicy.bench.report import (
    machine_info,
    machine_line,
    markdown_table,
    new_run_dir,
    write_results,
)
from robopolicy.bench.resume_exactness import bc_resume_exactness, rl_resume_exactness
from robopolicy.bench.training import train_checkpoint
from robopolicy.checkpoint import read_config, resolve_checkpoint
from robopolicy.config import ConfigError, to_dict
from robopolicy.deploy.codec import pack, unpack
from robopolicy.rl.config import METHODS
from robopolicy.sim.collect import CollectConfig, collect


@dataclass
class Config:
    checkpoint: str | None = None  # default: a small one trained here
    train_config: str = "train/lift_diffusion_mlp.yaml"
    collect_config: str = "collect/lift_proficient.yaml"
    train_overrides: list[str] = field(
        default_factory=lambda: ["optim.steps=300", "optim.batch_size=64", "loop.save_every=300"]
    )
    collect_overrides: list[str] = field(default_factory=lambda: ["n_demos=5"])
    seed: int = 0
    server_threads: int = 1
    fuzz_frames: int = 3000
    fuzz_seconds: float = 90.0  # the fuzz stops here even if frames are left
    oversize_frames: int = 5  # frames over max_message_bytes (each closes its connection)
    extreme_valid_steps: int = 8  # valid act steps after each extreme observation
    non_reading_clients: int = 8
    non_reading_seconds: float = 20.0  # longer than send_timeout_s, so drops show
    frame_bytes: int = 2**20  # the large frames non-reading clients send
    server_overrides: list[str] = field(default_factory=list)  # e.g. [send_timeout_s=5]
    # finetune methods whose kill -9 / resume is checked (scratch: SAC on the task alone;
    # residual, dsrl_sac, dsrl_na: on the bench's checkpoint as the frozen base)
    resume_methods: list[str] = field(default_factory=lambda: ["scratch", "residual"])
    only: list[str] = field(default_factory=list)  # section names to run (default: all)
    num_threads: int = 0  # torch threads in this process (0: torch's default; robopolicy.threads)
    executor: str = "local"  # its servers and clients share this machine: local only
    out_root: str = "runs/bench"


@dataclass
class Context:
    cfg: Config
    checkpoint: str
    out: Path
    history: dict[str, np.ndarray]  # a real observation history (T_obs, ...) of the task

    def obs(self, with_time: bool) -> dict[str, np.ndarray]:
        """A valid observation (with its time axis for ``chunk``): one the guard accepts."""
        return {k: v.copy() if with_time else v[-1].copy() for k, v in self.history.items()}


Section = Callable[[Context], dict[str, Any]]


def run(cfg: Config) -> dict[str, Any]:
    local_only(cfg.executor, "reliability")
    names = [section.__name__ for section in sections()]
    unknown = sorted(set(cfg.only) - set(names))
    if unknown:
        raise ConfigError(f"bench reliability: unknown sections {unknown} in only=; have {names}")
    if not 0 <= cfg.oversize_frames <= cfg.fuzz_frames or cfg.non_reading_clients < 1:
        raise ConfigError(
            "bench reliability: need 0 <= oversize_frames <= fuzz_frames and "
            f"non_reading_clients >= 1, got {cfg.oversize_frames}, {cfg.fuzz_frames}, "
            f"{cfg.non_reading_clients}"
        )
    bad_methods = sorted(set(cfg.resume_methods) - set(METHODS))
    if bad_methods:
        raise ConfigError(
            f"bench reliability: resume_methods {bad_methods} are not finetune methods {METHODS}"
        )
    out = new_run_dir(cfg.out_root, "reliability")
    checkpoint = str(
        resolve_checkpoint(cfg.checkpoint)
        if cfg.checkpoint
        else train_checkpoint(
            "lift",
            cfg.train_config,
            cfg.collect_config,
            out / "lift",
            [f"task.dataset={out / 'lift' / 'demos.hdf5'}", *cfg.train_overrides],
            cfg.collect_overrides,
        )
    )
    config = read_config(checkpoint)
    task, horizon = config["task"], int(config["policy"]["obs_horizon"])
    history = _history(task["env_id"], dict(task.get("env_kwargs") or {}), horizon)
    keys = config["shapes"]["obs"]
    history = {  # images back to the uint8 the server expects
        k: v.astype(np.uint8) if len(keys[k]) == 3 else v for k, v in history.items() if k in keys
    }
    ctx = Context(cfg, checkpoint, out, history)
    results: dict[str, Any] = {"suite": "reliability", "machine": machine_info()}
    results["config"] = to_dict(cfg)
    results["checkpoint"] = checkpoint
    results["sections"] = {}
    for section in sections():
        name = section.__name__
        if cfg.only and name not in cfg.only:
            continue
        print(f"[bench reliability] {name}", flush=True)
        start = time.perf_counter()
        results["sections"][name] = {**section(ctx), "seconds": time.perf_counter() - start}
    results["ok"] = all(s["ok"] for s in results["sections"].values())
    write_results(out, results, _report(results))
    for name, section_result in results["sections"].items():
        print(f"[bench reliability] {name}: {section_result['summary']}")
    print(f"[bench reliability] {'all ok' if results['ok'] else 'FAILED'} -> {out}/report.md")
    return results


# ---- a server per section -------------------------------------------------------------------
@contextlib.contextmanager
def served(ctx: Context, name: str, *overrides: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``robopolicy serve`` on a free loopback port, its log in ``<out>/<name>.log``."""
    port = _free_port()
    with open(ctx.out / f"{name}.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "robopolicy", "serve", ctx.checkpoint, f"port={port}"]
            + [f"num_threads={ctx.cfg.server_threads}", *ctx.cfg.server_overrides, *overrides],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield _wait_until_up(port, server), server
        finally:
            server.terminate()
            server.wait(30)


def answers_valid_request(ctx: Context, url: str) -> bool:
    """The server is alive: it answers a valid chunk request with a finite chunk."""
    try:
        with connect(url, max_size=None, proxy=None, open_timeout=10) as ws:
            ws.recv(10)  # metadata
            ws.send(pack({"type": "chunk", "obs": ctx.obs(True)}))
            reply = unpack(ws.recv(30))
    except (OSError, TimeoutError, ConnectionClosed):
        return False
    return reply.get("type") == "chunk" and bool(np.isfinite(reply["actions"]).all())


# ---- 1. malformed frames --------------------------------------------------------------------
def fuzz(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    rng = np.random.default_rng(cfg.seed)
    replies: Counter[str] = Counter()
    internal, sent, connections = 0, 0, 0
    with served(ctx, "fuzz-server") as (url, server):
        ws = _open(url)
        connections += 1
        stop = time.perf_counter() + cfg.fuzz_seconds
        frames = [_malformed(rng, ctx) for _ in range(cfg.fuzz_frames)]
        oversize = b"\x00" * (_server_limits(cfg.server_overrides)["max_message_bytes"] + 1)
        for i in np.linspace(0, cfg.fuzz_frames - 1, cfg.oversize_frames).astype(int):
            frames[i] = oversize  # spread out: each one costs a reconnection
        for frame in frames:
            if time.perf_counter() > stop:
                break
            sent += 1
            try:
                ws.send(frame)
                reply = unpack(ws.recv(30))
                replies[reply.get("type", "?")] += 1
                internal += "internal error" in str(reply.get("message", ""))
            except TimeoutError:  # before OSError, of which it is a kind
                replies["no reply (30 s)"] += 1
            except (ConnectionClosed, OSError):
                replies["connection closed"] += 1
                ws.close()
                ws = _open(url)
                connections += 1
        ws.close()
        alive = server.poll() is None and answers_valid_request(ctx, url)
    ok = alive and internal == 0 and "no reply (30 s)" not in replies
    return {
        "ok": ok,
        "frames": sent,
        "replies": dict(replies),
        "internal_errors": internal,
        "connections": connections,
        "alive_after": alive,
        "summary": f"{sent} malformed frames, replies {dict(replies)}, internal errors "
        f"{internal}, server {'answers' if alive else 'DOES NOT answer'} a valid request after",
    }


def _open(url: str):
    """A raw connection, its metadata read (entered as websockets >= 17 wants; closing the
    connection is all its exit does)."""
    ws = connect(url, max_size=None, proxy=None, open_timeout=10).__enter__()
    ws.recv(10)
    return ws


def _malformed(rng: np.random.Generator, ctx: Context) -> bytes | str:
    """One frame that breaks the protocol in one of many ways (some by the byte, some by the
    meaning); a few are valid requests in disguise, which is fine: the server must answer."""
    valid = {"type": "chunk", "obs": ctx.obs(True)}
    encoded = pack(valid)
    key = str(rng.choice(sorted(ctx.history)))
    kind = int(rng.integers(12))
    if kind == 0:  # noise
        return rng.bytes(int(rng.integers(0, 300)))
    if kind == 1:  # a valid request cut short
        return encoded[: int(rng.integers(0, len(encoded)))]
    if kind == 2:  # a valid request with flipped bytes
        data = bytearray(encoded)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[i] = int(rng.integers(256))
        return bytes(data)
    if kind == 3:  # the type field of every kind of value
        kinds = [None, 7, 1.5, [], {}, b"chunk", "x" * 10_000, "CHUNK", True]
        return msgpack.packb({"type": kinds[int(rng.integers(len(kinds)))]})
    if kind == 4:  # obs that is no map, or a map of the wrong things
        values = [None, 3, "obs", [1, 2], {key: None}, {key: [0.0] * 10}, {key: {}}, {1: 2}]
        return msgpack.packb({"type": "act", "obs": values[int(rng.integers(len(values)))]})
    if kind == 5:  # array headers that lie: dtype, shape or data
        header = {
            "__ndarray__": str(rng.choice(["|O", "<U4", "V8", "bogus", "<f4", "<i8", "<c16"])),
            "shape": [int(x) for x in rng.integers(-3, 2**31, size=int(rng.integers(0, 4)))],
            "data": rng.bytes(int(rng.integers(0, 64))),
        }
        return msgpack.packb({"type": "chunk", "obs": {key: header}})
    if kind == 6:  # wrong shapes
        obs = ctx.obs(True)
        obs[key] = np.zeros(tuple(int(x) for x in rng.integers(0, 5, size=int(rng.integers(4)))))
        return pack({"type": str(rng.choice(["chunk", "act"])), "obs": obs})
    if kind == 7:  # non-finite and extreme values
        obs = ctx.obs(True)
        obs[key] = np.full(obs[key].shape, rng.choice([np.nan, np.inf, -np.inf, 1e300]))
        return pack({"type": "chunk", "obs": obs})
    if kind == 8:  # deep nesting
        depth = int(rng.integers(100, 5000))
        return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    if kind == 9:  # text frames
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, size=int(rng.integers(50))))
    if kind == 10:  # a map header promising more than it holds
        return b"\xdf\xff\xff\xff\xff" + rng.bytes(int(rng.integers(0, 20)))
    return b"\x92" + encoded + encoded  # a message that is not a map (an array of two)


# ---- 2. extreme values ----------------------------------------------------------------------
EXTREMES = [
    ("float32 3e38", np.float32(3e38)),
    ("float32 -3e38", np.float32(-3e38)),
    ("float32 1e30", np.float32(1e30)),
    ("float64 1e300", np.float64(1e300)),
    ("float64 1e40", np.float64(1e40)),
    ("int64 2**62", np.int64(2**62)),
    ("int64 -2**63", np.int64(-(2**63))),
    ("float16 65504", np.float16(65504)),
]


def extreme_values(ctx: Context) -> dict[str, Any]:
    per_server = {}
    for guard in ("error", "warn"):
        with served(ctx, f"extreme-{guard}-server", f"obs_guard.action={guard}") as (url, _):
            per_server[guard] = _extreme_requests(ctx, url)
    non_finite = sum(r["non_finite_actions_sent"] for r in per_server.values())
    requests = sum(r["requests"] for r in per_server.values())
    return {
        "ok": non_finite == 0,
        "values": [name for name, _ in EXTREMES],
        "servers": per_server,
        "non_finite_actions_sent": non_finite,
        "summary": f"{requests} requests ({len(EXTREMES)} extreme values x key x mode, each "
        f"followed by {ctx.cfg.extreme_valid_steps} valid steps) on two servers: "
        f"{non_finite} non-finite actions sent",
    }


def _extreme_requests(ctx: Context, url: str) -> dict[str, Any]:
    replies: Counter[str] = Counter()
    non_finite = requests = 0
    with _open(url) as ws:

        def ask(message: dict[str, Any]) -> None:
            nonlocal non_finite, requests
            ws.send(pack(message))
            reply = unpack(ws.recv(30))
            requests += 1
            label = reply["type"]
            if label == "error":
                refused = "non-finite" not in str(reply.get("message", ""))
                label = "error: observation refused" if refused else "error: non-finite action"
            replies[label] += 1
            actions = reply.get("actions", reply.get("action"))
            if actions is not None and not np.isfinite(actions).all():
                non_finite += 1

        for _, value in EXTREMES:
            for key, valid in ctx.history.items():
                if valid.dtype == np.uint8:
                    continue  # images: no extreme values to send
                for mode in ("chunk", "act"):
                    obs = ctx.obs(mode == "chunk")
                    obs[key] = np.full(obs[key].shape, value)
                    ask({"type": mode, "obs": obs})
                    for _ in range(ctx.cfg.extreme_valid_steps if mode == "act" else 0):
                        ask({"type": "act", "obs": ctx.obs(False)})
                    ask({"type": "reset"})
    return {"requests": requests, "replies": dict(replies), "non_finite_actions_sent": non_finite}


# ---- 3. clients that never read -------------------------------------------------------------
class NonReadingClient:
    """A websocket client on a plain socket with a tiny receive buffer that sends and never
    reads: the sans-I/O protocol of ``websockets`` does the handshake and framing."""

    def __init__(self, url: str, receive_buffer: int = 4096, timeout: float = 2.0) -> None:
        uri = parse_uri(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect((uri.host, uri.port))
        self.protocol = ClientProtocol(uri, max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is State.CONNECTING:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the server closed the connection during the handshake")
            self.protocol.receive_data(data)
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc
        self.sock.settimeout(timeout)

    def send(self, payload: bytes, times: int = 1) -> None:
        """Send ``payload`` as ``times`` frames in one write; raises ``TimeoutError`` when the
        write blocks for the timeout, another ``OSError`` once the server dropped us."""
        for _ in range(times):
            self.protocol.send_binary(payload)
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def close(self) -> None:
        self.sock.close()


def non_reading_clients(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    limits = _server_limits(cfg.server_overrides)
    with served(ctx, "non-reading-server") as (url, server):
        process = psutil.Process(server.pid)
        baseline = process.memory_info().rss
        big = pack({"type": "act", "obs": 1, "pad": b"\x00" * cfg.frame_bytes})
        # A small frame with a large reply: the error names each of its 100 unexpected keys.
        echo = pack(
            {"type": "act", "obs": {f"unexpected_{i:03d}_{'x' * 20}": 0 for i in range(100)}}
        )
        outcome: list[str] = ["running"] * cfg.non_reading_clients
        stop = time.perf_counter() + cfg.non_reading_seconds

        def client(i: int) -> None:
            try:
                sender = NonReadingClient(url)
            except Exception as err:  # noqa: BLE001 - refused (e.g. 503): reported
                outcome[i] = f"refused ({type(err).__name__})"
                return
            try:
                outcome[i] = _flood(sender, big, echo, stop)
            finally:
                sender.close()

        threads = [
            threading.Thread(target=client, args=(i,)) for i in range(cfg.non_reading_clients)
        ]
        for thread in threads:
            thread.start()
        peak = baseline
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        alive = server.poll() is None and answers_valid_request(ctx, url)
        after = process.memory_info().rss
        peak = max(peak, after)
    dropped = (ctx.out / "non-reading-server.log").read_text().count("send buffer full")
    bound = baseline + RSS_SLACK + cfg.non_reading_clients * _per_client_bound(cfg, limits)
    mib = 2**20
    return {
        "ok": alive and peak <= bound,
        "clients": cfg.non_reading_clients,
        "flood_seconds": cfg.non_reading_seconds,
        "frame_bytes": cfg.frame_bytes,
        "limits": limits,
        "rss_baseline_mib": baseline / mib,
        "rss_peak_mib": peak / mib,
        "rss_after_mib": after / mib,
        "rss_bound_mib": bound / mib,
        "outcomes": dict(Counter(outcome)),
        "dropped_by_server": dropped,
        "alive_after": alive,
        "summary": f"{cfg.non_reading_clients} clients sending {cfg.frame_bytes / mib:g} MiB "
        f"frames and never reading for {cfg.non_reading_seconds:g} s: server RSS "
        f"{baseline / mib:.0f} -> peak {peak / mib:.0f} MiB (bound {bound / mib:.0f} MiB), "
        f"clients {dict(Counter(outcome))} ({dropped} drops in the server's log), server "
        f"{'answers' if alive else 'DOES NOT answer'} a valid request after",
    }


def _flood(sender: NonReadingClient, big: bytes, echo: bytes, stop: float) -> str:
    """Send until ``stop`` without reading; how it ended for this client. Frames alternate:
    one whose large reply fills the send buffer fast, and a large one, so that once the
    server stops reading this client half the frames it holds for it are large."""
    try:
        while time.perf_counter() < stop:
            sender.send(echo)
            sender.send(big)
        return "never blocked"
    except TimeoutError:  # before OSError, of which it is a kind
        pass
    except OSError:
        return "dropped by the server"
    # The server stopped reading this client: it must drop it, not hold its frames forever.
    # (Reading would show it, but this client never reads: a write fails once it is dropped.)
    while time.perf_counter() < stop:
        try:
            sender.send(echo)
        except TimeoutError:
            continue
        except OSError:
            return "dropped by the server"
    return "blocked, not dropped"


RSS_SLACK = 16 * 2**20
"""The server's own working memory beyond its idle RSS (allocator arenas, inference)."""


def _per_client_bound(cfg: Config, limits: dict[str, int]) -> int:
    """What one client may pin: the frames queued for reading, the one being assembled, the
    one being handled and its decoded copy, its send buffer, and the transport's read buffer."""
    return (
        (limits["max_queued_messages"] + 3) * (cfg.frame_bytes + 64)
        + limits["send_buffer_bytes"]
        + 2**18
    )


def _server_limits(overrides: list[str]) -> dict[str, int]:
    """The per-client limits the served process runs with (its defaults and our overrides)."""
    from robopolicy.config import load_config
    from robopolicy.deploy.server import ServeConfig

    cfg = load_config(None, ServeConfig, list(overrides))
    return {
        "max_queued_messages": cfg.max_queued_messages,
        "send_buffer_bytes": cfg.send_buffer_bytes,
        "max_message_bytes": cfg.max_message_bytes,
        "send_timeout_s": cfg.send_timeout_s,
    }


# ---- the sections, in order -----------------------------------------------------------------
def bc_resume(ctx: Context) -> dict[str, Any]:
    """A tiny BC run killed with SIGKILL after its first checkpoint and resumed with
    ``resume=<run>`` alone ends with the tensors of its uninterrupted twin."""
    result = bc_resume_exactness(ctx.out / "resume" / "bc", _lift_demos(ctx))
    return _exactness_verdict(result)


def rl_resume(ctx: Context) -> dict[str, Any]:
    """The same for ``robopolicy finetune``, killed inside running episodes: SAC from scratch,
    and each of ``resume_methods`` on the bench's checkpoint as its frozen base."""
    runs = {}
    for method in ctx.cfg.resume_methods:
        base = None if method == "scratch" else ctx.checkpoint
        work = ctx.out / "resume" / method
        runs[method] = rl_resume_exactness(work, method=method, base=base)
    verdicts = {method: _exactness_verdict(r) for method, r in runs.items()}
    return {
        "ok": all(v["ok"] for v in verdicts.values()),
        "summary": "; ".join(f"{m}: {v['summary']}" for m, v in verdicts.items()),
        "runs": runs,
    }


def _exactness_verdict(result: dict[str, Any]) -> dict[str, Any]:
    ok = result["max_abs_diff"] == 0.0 and result["duplicate_log_rows"] == 0
    summary = (
        f"killed at {result['killed_at']} of {result['steps']}, resumed: max abs Δ = "
        f"{result['max_abs_diff']:g} over {result['tensors']} tensors, "
        f"{result['duplicate_log_rows']} log rows written twice"
    )
    return {**result, "ok": ok, "summary": summary}


def _lift_demos(ctx: Context) -> str:
    """Lift demonstrations for the BC resume: the bench checkpoint's own when it is a Lift
    policy, else four collected here."""
    task = read_config(ctx.checkpoint).get("task", {})
    dataset = task.get("dataset")
    if task.get("env_id") == "robopolicy/Lift-v0" and dataset and Path(dataset).is_file():
        return str(dataset)
    out = ctx.out / "resume" / "lift_demos.hdf5"
    collect(CollectConfig(env_id="robopolicy/Lift-v0", n_demos=4, output=str(out)), progress=False)
    return str(out)


RESUME_SECTIONS: list[Section] = [bc_resume, rl_resume]
"""Kill -9 / resume exactness for BC and RL (max |Δ| = 0, no metrics row logged twice)."""


def sections() -> list[Section]:
    return [fuzz, extreme_values, *RESUME_SECTIONS, non_reading_clients]


def _report(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [
        [name, "ok" if s["ok"] else "**FAILED**", s["summary"], f"{s['seconds']:.0f}"]
        for name, s in results["sections"].items()
    ]
    return "\n".join(
        [
            "# Benchmark: reliability",
            "",
            f"{machine_line(m)} Checkpoint `{results['checkpoint']}`; each "
            "section runs `robopolicy serve` in its own process on 127.0.0.1.",
            "",
            markdown_table(["section", "verdict", "figures", "s"], rows),
            "",
        ]
    )
