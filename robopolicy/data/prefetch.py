"""Batches gathered on a background thread, so a GPU never waits for the next batch.

On a CPU the in-memory gather is ~1% of a training step; on a GPU the step is so short that
gathering in the training thread left the GPU idle for a quarter of the time (docs/BENCHMARKS.md,
the conv image recipe on an H100), so ``train_bc`` prefetches when it trains on CUDA. A thread
is enough: the gather is ``index_select`` copies, which release the GIL. With ``pin_memory``
the batch is pinned on the thread too, so the host-to-device copy can run asynchronously.

Exact resume is kept: each batch travels with the source's state *after* it was drawn, and
``state_dict`` returns the state of the last batch the training loop took, not of the batches
waiting in the queue.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

from robopolicy.data.sequence import Batch, RandomBatches


class PrefetchedBatches:
    """Wraps ``RandomBatches``; the same batches in the same order, ``depth`` of them ahead."""

    def __init__(self, source: RandomBatches, depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.source = source
        self.pin_memory = pin_memory
        self._consumed_state = source.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # the thread's failure, raised on every next()

    def __iter__(self) -> PrefetchedBatches:
        return self

    def __next__(self) -> Batch:
        if self._stop.is_set():
            raise RuntimeError("these prefetched batches were closed")
        if self._error is not None:
            raise RuntimeError("the batch prefetch thread failed") from self._error
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="batches", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._error = item
            raise RuntimeError("the batch prefetch thread failed") from item
        batch, self._consumed_state = item
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The source's state after the last batch taken: resuming from it continues exactly."""
        return dict(self._consumed_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict must come before the first batch is taken")
        self.source.load_state_dict(state)
        self._consumed_state = self.source.state_dict()

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: draining wakes it) and drop the
        batches it queued."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.1)
            self._thread = None
        while not self._queue.empty():
            self._queue.get_nowait()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self.source)
                if self.pin_memory:
                    batch = _pinned(batch)
                self._put((batch, self.source.state_dict()))
        except BaseException as err:  # handed to the training thread, which raises it
            self._put(err)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def _pinned(batch: Batch) -> Batch:
    return {
        "obs": {k: v.pin_memory() for k, v in batch["obs"].items()},
        "actions": batch["actions"].pin_memory(),
    }
