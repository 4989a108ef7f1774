"""A small synchronous client for the policy server (what runs on the robot computer)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from websockets.sync.client import connect

from robopolicy.deploy.codec import MAX_MESSAGE_BYTES, pack, unpack


class ServerError(RuntimeError):
    """The server answered a request with an error message."""


class PolicyClient:
    """``PolicyClient("ws://127.0.0.1:8765")``: ``metadata`` on connect, then ``chunk``,
    ``act``, ``reset``. Each reply's round-trip time (ms) is kept in ``last_rtt_ms``."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        # websockets >= 17 wants connect() entered as a context manager; this client is the
        # context that owns it (older versions return the connection itself, also a context).
        self._context = connect(
            url,
            additional_headers=headers,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
            open_timeout=timeout,
            proxy=None,
        )
        self._ws = self._context.__enter__()
        self.timeout = timeout
        self.metadata: dict[str, Any] = unpack(self._ws.recv(timeout))
        self.last_rtt_ms = 0.0
        self.last_server_ms = 0.0

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        self._ws.send(pack(message))
        reply = unpack(self._ws.recv(self.timeout))
        self.last_rtt_ms = 1e3 * (time.perf_counter() - start)
        self.last_server_ms = float(reply.get("server_ms", 0.0))
        if reply.get("type") == "error":
            raise ServerError(reply["message"])
        return reply

    def chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """Actions (N, A) from the newest observation on; ``obs_history`` is (T_obs, ...)."""
        return self.request({"type": "chunk", "obs": obs_history})["actions"]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next action (A,) under the server's execution scheme (e.g. RTI)."""
        return self.request({"type": "act", "obs": obs})["action"]

    def reset(self) -> None:
        self.request({"type": "reset"})

    def close(self) -> None:
        self._context.__exit__(None, None, None)

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
