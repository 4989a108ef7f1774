"""``robopolicy serve CHECKPOINT``: a websocket policy server speaking msgpack (no pickle).

Protocol (every frame a msgpack map, arrays as in ``deploy.codec``):

    server -> client on connect   {"type": "metadata", ...deploy metadata, "execution": {...}}
    {"type": "chunk", "obs": {key: (T_obs, ...)}}  ->  {"type": "chunk", "actions": (N, A),
                                                        "server_ms": float}
        stateless: the client sends its observation history; ``actions`` are the chunk from the
        newest observation on (N = pred_horizon - obs_horizon + 1; execute ``action_horizon``)
    {"type": "act", "obs": {key: (...)}}            ->  {"type": "action", "action": (A,),
                                                        "server_ms": float}
        stateful: the server keeps this connection's history and plan and runs the configured
        execution scheme (chunked, temporal ensembling or RTI); one request per control step
    {"type": "reset"}                               ->  {"type": "reset"}     (new episode)

    An RL checkpoint (``robopolicy finetune``: residual or DSRL) is served as one policy, the
    frozen base plus its actor, through ``act`` only (the actor acts per step or per chunk
    on the base's own schedule, so there is no stateless chunk to hand out); its metadata is
    the base's plus ``rl``.
    {"type": "ping"}                                ->  {"type": "pong"}
    anything wrong                                  ->  {"type": "error", "message": "..."}

HTTP ``GET /healthz`` answers 200 without a websocket. With an API key (from the environment
variable ``ROBOPOLICY_API_KEY`` or ``api_key_file``, never the command line, where ``ps`` shows
it), the handshake must carry ``Authorization: Bearer <key>`` (401 otherwise). A bad message
gets an error reply and the connection stays open; a client that vanishes mid-request only
ends its own connection. Inference is serialised by a lock and runs in a worker thread, so the
event loop keeps answering health checks and other clients' bad messages while the policy
computes.

Observations are checked after the cast to the model's dtype against the normaliser's range
(``obs_guard``, see ``robopolicy.inference.guard``), and a non-finite action is never sent: the
reply is an error and the connection's planned actions are dropped.

Each client's memory is bounded: at most ``max_queued_messages`` frames of at most
``max_message_bytes`` wait to be read, and replies wait in a send buffer of
``send_buffer_bytes``; a client that lets it stay full for ``send_timeout_s`` (it does not
read) is dropped, one that sends nothing for ``idle_timeout_s`` is closed, and beyond
``max_connections`` a handshake gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import http
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.server import Request, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from robopolicy.checkpoint import load_policy, read_config, read_meta, resolve_checkpoint
from robopolicy.config import to_dict
from robopolicy.deploy.codec import MAX_MESSAGE_BYTES, ProtocolError, pack, unpack
from robopolicy.deploy.export import deploy_metadata
from robopolicy.inference.execution import ExecutionConfig, make_executor
from robopolicy.inference.executor import threshold_discrete
from robopolicy.inference.guard import (
    GuardError,
    NonFiniteActionError,
    ObsGuard,
    ObsGuardConfig,
    check_actions,
    validate_guard_config,
)

log = logging.getLogger(__name__)

API_KEY_ENV = "ROBOPOLICY_API_KEY"


MAX_PORT = 65535


@dataclass
class ServeConfig:
    checkpoint: str = ""
    pick: str = "last"  # of a run's checkpoints: last (the final) or best (an RL run's best eval)
    host: str = "127.0.0.1"  # loopback only unless asked otherwise
    port: int = 8765
    api_key: str | None = None  # Python callers only; the CLI takes api_key_file or the env
    api_key_file: str | None = None  # a file holding the key (else $ROBOPOLICY_API_KEY)
    device: str = "cpu"
    num_threads: int = 0  # torch threads (0: torch's default)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_queued_messages: int = 2  # frames read ahead per client (each up to max_message_bytes)
    send_buffer_bytes: int = 2**16  # replies buffered per client before sending waits
    send_timeout_s: float = 10.0  # a client whose send buffer stays full this long is dropped
    idle_timeout_s: float = 300.0  # close a connection silent this long (0: never)
    max_connections: int = 32  # further handshakes get 503
    obs_guard: ObsGuardConfig = field(default_factory=ObsGuardConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)


def resolve_api_key(cfg: ServeConfig) -> str | None:
    """The key from ``api_key`` (Python callers), ``api_key_file`` or ``$ROBOPOLICY_API_KEY``;
    None without any. Giving two is an error rather than a silent choice."""
    given = [name for name in ("api_key", "api_key_file") if getattr(cfg, name) is not None]
    if len(given) > 1:
        raise ValueError("give api_key or api_key_file, not both")
    if cfg.api_key is not None:
        key = cfg.api_key
    elif cfg.api_key_file is not None:
        path = Path(cfg.api_key_file)
        if not path.is_file():
            raise FileNotFoundError(f"api_key_file {path} does not exist")
        if path.stat().st_mode & 0o077:
            log.warning("api_key_file %s is readable by other users (chmod 600 it)", path)
        key = path.read_text().strip()
    else:
        key = os.environ.get(API_KEY_ENV) or None
        if key is None:
            return None
    if not key:
        where = f"api_key_file {cfg.api_key_file}" if cfg.api_key_file else "api_key"
        raise ValueError(f"{where} is empty")
    return key


def _check_limits(cfg: ServeConfig) -> None:
    for name in (
        "max_message_bytes",
        "max_queued_messages",
        "send_buffer_bytes",
        "max_connections",
    ):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("send_timeout_s", "idle_timeout_s"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0: no timeout), got {getattr(cfg, name)}")


class PolicyServer:
    def __init__(self, cfg: ServeConfig) -> None:
        if not 0 <= cfg.port <= MAX_PORT:  # checked before the checkpoint loads, not at bind
            raise ValueError(f"port must be in 0..{MAX_PORT} (0: any free port), got {cfg.port}")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        _check_limits(cfg)
        self.api_key = resolve_api_key(cfg)
        self.guard_cfg = ObsGuardConfig(**to_dict(cfg.obs_guard))
        validate_guard_config(self.guard_cfg)  # before the checkpoint loads: fail early
        path = resolve_checkpoint(cfg.checkpoint, cfg.pick)
        self.cfg = cfg
        self.execution = ExecutionConfig(**to_dict(cfg.execution))
        config = read_config(path)
        self.rl_agent = None
        if "rl" in config:
            self.rl_agent = _load_rl_agent(path, config, self.execution, cfg.device)
            self.policy = self.rl_agent.policy
            rl_meta = {"method": config["rl"]["method"], "step": read_meta(path)["step"]}
            # EXPO's checkpoint carries its trained base; the others name their frozen one
            base = path if "policy" in config else config["rl"]["base"]
            self.metadata = {**deploy_metadata(base), "rl": rl_meta}
        else:
            self.policy = load_policy(path, device=cfg.device)
            make_executor(self.policy, 1, self.execution)  # sets the sampler; checks settings
            self.metadata = deploy_metadata(path)
        self.metadata.update(
            execution=asdict(self.execution), num_inference_steps=self.policy.num_inference_steps
        )
        self.discrete_dims = list(self.metadata["discrete_action_dims"])
        self.guard = ObsGuard(self.policy.normalizer, self.guard_cfg)
        self.dtype = next(self.policy.parameters()).dtype
        self._accepted: set[ServerConnection] = set()
        self.dropped = 0  # clients dropped for not reading their replies
        if self.rl_agent is not None:  # the first session fixes the base's sampler, once
            self._new_session()
        self._lock = asyncio.Lock()
        self.requests_served = 0
        self.errors = 0

    # ---- validation ------------------------------------------------------------------------
    def _observation(self, message: dict[str, Any], with_time: bool) -> dict[str, torch.Tensor]:
        obs = message.get("obs")
        if not isinstance(obs, dict):
            raise ProtocolError("'obs' must be a map of observation key -> array")
        spec = self.metadata["observations"]
        missing, unknown = sorted(set(spec) - set(obs)), sorted(set(obs) - set(spec))
        if missing or unknown:
            raise ProtocolError(
                f"observation keys: missing {missing}, unexpected {unknown}; "
                f"expected {sorted(spec)}"
            )
        out = {}
        for key, value in obs.items():
            expected = ([self.policy.obs_horizon] if with_time else []) + spec[key]["shape"]
            if not isinstance(value, np.ndarray) or list(value.shape) != expected:
                got = list(value.shape) if isinstance(value, np.ndarray) else type(value).__name__
                raise ProtocolError(f"observation {key!r}: expected shape {expected}, got {got}")
            image = len(spec[key]["shape"]) == 3
            if image and value.dtype != np.uint8:
                raise ProtocolError(f"observation {key!r}: images must be uint8, got {value.dtype}")
            if not image and value.dtype.kind not in "fiu":
                raise ProtocolError(f"observation {key!r}: expected numbers, got {value.dtype}")
            if not image and not np.isfinite(value).all():
                raise ProtocolError(f"observation {key!r} contains NaN or inf")
            tensor = torch.from_numpy(value)
            out[key] = (tensor if image else tensor.to(self.dtype)).unsqueeze(0)
        self.guard.check_obs(out)  # after the cast: 1e300 is inf in float32
        return {key: value.to(self.policy.device) for key, value in out.items()}

    # ---- inference -------------------------------------------------------------------------
    def _chunk(self, obs: dict[str, torch.Tensor]) -> np.ndarray:
        chunk = self.policy.predict_chunk(obs)[0, self.policy.obs_horizon - 1 :]
        check_actions(chunk, "action chunk")
        return threshold_discrete(chunk, self.discrete_dims).cpu().numpy()

    @staticmethod
    def _act(executor, obs: dict[str, torch.Tensor]) -> np.ndarray:
        """One step of the connection's execution scheme; a non-finite action drops the plan
        (the rest of a poisoned chunk would otherwise serve the next valid observations)."""
        action = executor.act(obs)[0]
        try:
            check_actions(action)
        except NonFiniteActionError:
            executor.reset()
            raise
        return action.cpu().numpy()

    async def _infer(self, function, *args) -> tuple[Any, float]:
        async with self._lock:
            start = time.perf_counter()
            result = await asyncio.to_thread(function, *args)
            return result, 1e3 * (time.perf_counter() - start)

    async def _reply(self, message: dict[str, Any], executor) -> dict[str, Any]:
        kind = message.get("type")
        if kind == "chunk" and self.rl_agent is not None:
            raise ProtocolError("this is an RL policy (base + actor): send 'act' messages")
        if kind == "chunk":
            actions, ms = await self._infer(self._chunk, self._observation(message, True))
            return {"type": "chunk", "actions": actions, "server_ms": ms}
        if kind == "act":
            obs = self._observation(message, False)
            action, ms = await self._infer(self._act, executor, obs)
            return {"type": "action", "action": action, "server_ms": ms}
        if kind == "reset":
            executor.reset()
            return {"type": "reset"}
        if kind == "ping":
            return {"type": "pong"}
        shown = repr(kind) if len(repr(kind)) <= 60 else repr(kind)[:60] + "..."  # no echoing MBs
        raise ProtocolError(f"unknown message type {shown}; expected chunk, act, reset or ping")

    # ---- connections -----------------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        executor = (
            self._new_session()
            if self.rl_agent is not None
            else make_executor(
                self.policy, 1, self.execution, self.discrete_dims, configure_policy=False
            )
        )
        try:
            await self._send(connection, {"type": "metadata", **self.metadata})
            while (payload := await self._receive(connection)) is not None:
                try:
                    reply = await self._reply(unpack(payload), executor)
                    self.requests_served += 1
                except (ProtocolError, GuardError) as err:
                    self.errors += 1
                    reply = {"type": "error", "message": str(err)}
                except Exception as err:  # a bug on our side: report it, keep serving
                    self.errors += 1
                    log.exception("request failed")
                    reply = {"type": "error", "message": f"internal error: {err!r}"}
                await self._send(connection, reply)
        except ConnectionClosed:
            pass  # the client left, possibly mid-request: nothing else is affected
        except TimeoutError:  # its replies stayed unread: drop it, freeing its buffers
            self.dropped += 1
            log.warning(
                "dropped %s: send buffer full for %g s",
                connection.remote_address,
                self.cfg.send_timeout_s,
            )
            connection.transport.abort()

    async def _receive(self, connection: ServerConnection) -> bytes | str | None:
        """The next frame, or None once the client is silent for ``idle_timeout_s`` (closed)."""
        timeout = self.cfg.idle_timeout_s or None
        try:
            return await asyncio.wait_for(connection.recv(), timeout)
        except TimeoutError:
            await connection.close(1000, f"idle for {self.cfg.idle_timeout_s:g} s")
            return None

    async def _send(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        """Send, or raise ``TimeoutError`` when the send buffer stays full (the client does not
        read): without the limit each such client pins its queued frames and replies."""
        await asyncio.wait_for(connection.send(pack(message)), self.cfg.send_timeout_s or None)

    def _new_session(self) -> AgentSession:
        return AgentSession(self.rl_agent, self.discrete_dims)

    def _process_request(self, connection: ServerConnection, request: Request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}"):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong key\n")
        self._accepted = {c for c in self._accepted if c.state is not State.CLOSED}
        if len(self._accepted) >= self.cfg.max_connections:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"at the limit of {self.cfg.max_connections} connections (max_connections)\n",
            )
        self._accepted.add(connection)
        # The kernel's buffer too: autotuned, it would hold megabytes of unread replies.
        sock = connection.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.cfg.send_buffer_bytes)
        return None

    async def serve_forever(self, ready: threading.Event | None = None) -> None:
        async with serve(
            self._handle,
            self.cfg.host,
            self.cfg.port,
            process_request=self._process_request,
            max_size=self.cfg.max_message_bytes,
            max_queue=self.cfg.max_queued_messages,
            write_limit=self.cfg.send_buffer_bytes,
            compression=None,  # float arrays barely compress; deflate would only add latency
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            await asyncio.get_running_loop().create_future()  # until cancelled

    def start_background(self) -> int:
        """Serve from a daemon thread (tests, notebooks); returns the bound port."""
        ready = threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(self.serve_forever(ready)))
        thread.daemon = True
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("policy server did not start within 30 s")
        return self.port


class AgentSession:
    """One connection's episode of an RL policy, behind the executor interface (act, reset)."""

    def __init__(self, agent, discrete_dims: list[int]) -> None:
        self.agent = agent.session()
        self.agent.setup(1, discrete_dims)

    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.cpu().numpy() for k, v in obs.items()}
        return torch.as_tensor(self.agent.act(batch, None))

    def reset(self) -> None:
        self.agent.reset(np.array([True]))


def _load_rl_agent(path, config: dict, execution: ExecutionConfig, device: str):
    from robopolicy.rl.actors import load_rl_agent

    if execution != ExecutionConfig():
        raise ValueError(
            "execution.* settings do not apply to an RL checkpoint: its base runs as in RL "
            "training (residual: chunked; DSRL: one DDIM decode per chunk)"
        )
    return load_rl_agent(path, config, device)


def run_server(cfg: ServeConfig) -> None:
    server = PolicyServer(cfg)
    meta = server.metadata
    what = f"{meta['rl']['method']} on " if "rl" in meta else ""
    print(
        f"serving {what}{meta['policy_type']}-{meta['backbone']} for {meta['env_id']} "
        f"({meta['control_hz']:g} Hz) on ws://{cfg.host}:{cfg.port} "
        f"{'(API key required)' if server.api_key else ''}",
        flush=True,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve_forever())
    except OSError as err:  # the port is taken, the host is not an address of this machine, ...
        raise ValueError(f"cannot listen on {cfg.host}:{cfg.port}: {err.strerror or err}") from err
