"""SIGTERM as an exception, so that an interrupted command cleans up like a failed one.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``, which unwinds ``with`` blocks and
``finally`` clauses, but SIGTERM (``kill``, a job scheduler's stop) ends the process where it
stands: a dataset writer's temporary file is left behind. Inside ``sigterm_unwinds()`` SIGTERM
raises ``SystemExit(143)`` (128 + 15, the status a shell reports for a SIGTERM) instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM
_terminated = threading.Event()  # a SIGTERM arrived inside the block


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    _terminated.set()
    raise SystemExit(SIGTERM_EXIT_STATUS)


def raise_if_terminated() -> None:
    """Raise ``SystemExit(143)`` if a SIGTERM arrived in the block but its exception was lost.

    The handler raises wherever the main thread stands. If that is inside a finalizer
    (``__del__``, a weakref callback: h5py and GL objects have them), Python prints "Exception
    ignored" and carries on, and a collection would go on for hours. Loops call this once per
    unit of work so that the signal still ends them."""
    if _terminated.is_set():
        raise SystemExit(SIGTERM_EXIT_STATUS)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit``; the previous handler is restored after.
    Only the main thread can own signal handlers: elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
