"""A background thread that loads numbered batches into a bounded queue (Caffe's prefetching).

The thread calls ``load(b)`` for b = start, start + 1, ... and queues ``(b, batch)``; the consumer
takes them in order. It holds no reference to the layer that owns it, so the layer can be
garbage-collected; the owner registers `Prefetcher.close` with `weakref.finalize`.
An exception in `load` is queued in place of the batch and re-raised by `get`.
"""
from __future__ import annotations

import queue
import threading
import traceback
from typing import Any, Callable

__all__ = ["Prefetcher", "LoadFailure"]

_POLL_S = 0.1


class LoadFailure:
    """What the thread queues when `load` raised."""

    def __init__(self, batch: int, exc: BaseException):
        self.batch = batch
        self.exc = exc
        self.trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Prefetcher:
    """Loads batches `start, start + 1, ...` with `load` on a daemon thread, `depth` ahead.

    Args:
        load: batch index -> batch (any object); called on the thread only.
        start: the first batch index to load.
        depth: how many loaded batches may wait in the queue (>= 1).
        name: the thread's name (shows in stack dumps).
        on_start: optional callable run first on the thread (e.g. to open a DB cursor there).
    """

    def __init__(self, load: Callable[[int], Any], start: int, depth: int, name: str = "prefetch",
                 on_start: Callable[[], None] | None = None):
        self._load = load
        self._on_start = on_start
        self._next = start
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        b = self._next
        try:
            if self._on_start is not None:
                self._on_start()
            while not self._stop.is_set():
                item = (b, self._load(b))
                if not self._put(item):
                    return
                b += 1
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put((b, LoadFailure(b, e)))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> tuple[int, Any]:
        """The next (batch index, batch); a `LoadFailure` in place of a batch that failed."""
        while True:
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the prefetch thread stopped without producing a batch")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and drop queued batches. Idempotent; safe from a finalizer."""
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
