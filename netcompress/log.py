"""Caffe-style (glog) logging.

Lines look like Caffe's, `I1122 04:44:21.110855 26966 net.py:136] Top shape: 64 20 24 24 (737280)`,
so Caffe's own log parsers (tools/extra/parse_log.py) and users' scripts keep working.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
from typing import Callable, Iterator

LOGGER_NAME = "netcompress"


class GlogFormatter(logging.Formatter):
    _LEVEL = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
              logging.ERROR: "E", logging.CRITICAL: "F"}

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        usec = int((record.created - int(record.created)) * 1e6)
        prefix = "%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] " % (
            self._LEVEL.get(record.levelno, "I"), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
            t.tm_sec, usec, os.getpid(), os.path.basename(record.pathname), record.lineno)
        msg = record.getMessage()
        if msg.endswith("\n") and not record.exc_info:  # (glog ends a line once: a message's own newline does it)
            msg = msg[:-1]
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return prefix + msg


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger (or a child of it)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


class LogReaderGone(BrokenPipeError):
    """The log's reader has gone (`netcompress train ... 2>&1 | head`) and the work stopped for it: the error
    boundary ends the command quietly with SIGPIPE's status, as the reader can no longer be told anything."""


_gone_listeners: list[Callable[[], None]] = []


def _reader_gone() -> None:
    """A write of the log met a pipe whose reader has closed it: tell whoever listens (a training loop, which
    stops and snapshots, where Caffe would die of SIGPIPE at its next log line and lose the run)."""
    for callback in list(_gone_listeners):
        callback()


@contextlib.contextmanager
def on_reader_gone(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback()` (from the logging thread) whenever a log write finds its reader gone, while inside."""
    _gone_listeners.append(callback)
    try:
        yield
    finally:
        _gone_listeners.remove(callback)


@contextlib.contextmanager
def stop_if_reader_gone() -> Iterator[Callable[[str], None]]:
    """Inside, the yielded `check(done)` raises LogReaderGone ("the log's reader has gone: <done>") once a log write
    has found its reader gone: a loop whose only output is its log (`netcompress test ... 2>&1 | head`) stops
    there, where Caffe dies of SIGPIPE at that log line, instead of running on unseen and holding the shell."""
    gone: list[bool] = []

    def check(done: str) -> None:
        if gone:
            raise LogReaderGone(errno.EPIPE, f"the log's reader has gone: {done}")

    with on_reader_gone(lambda: gone.append(True)):
        yield check


class _StatusAwareHandler(logging.StreamHandler):
    """Writes to a fixed stream, or to whatever sys.stderr is at the time of each record; clears
    the progress line (if any) before a record and redraws it after."""

    def __init__(self, stream=None):
        super().__init__(stream or sys.stderr)
        self.fixed_stream = stream

    @property
    def stream(self):
        return self.fixed_stream if self.fixed_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        bar = _status if (_status is not None and _status.stream is self.stream) else None
        if bar is not None:
            bar.clear()
        super().emit(record)
        if bar is not None:
            bar.redraw()

    def handleError(self, record: logging.LogRecord) -> None:
        # (a closed pipe: no "--- Logging error ---" with a traceback, which would only meet the same pipe)
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            _reader_gone()
            return
        super().handleError(record)


PROGRESS_INTERVAL = 30.0  # seconds between progress lines when the output is not a terminal
progress_clock = time.monotonic  # StatusLine's default time source (a test may replace it)


class StatusLine:
    """Progress: iterations, iterations/s, ETA and the current loss.

    On an interactive terminal, a one-line display that log records printed meanwhile go above.
    Elsewhere (a log file, CI, nohup) a glog-style line `progress <label>: iteration ...` at most
    every `interval` seconds, so long work is never silent; Caffe's log parsers ignore these lines
    (they never contain `Iteration N`). `clock` is a monotonic time source (default `progress_clock`;
    tests pass a fake one). Set `enabled` to False to show nothing (e.g. on all but rank 0).
    """

    def __init__(self, total: int, start: int = 0, stream=None, label: str = "train", *,
                 interval: float = PROGRESS_INTERVAL, clock=None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True
        self.total, self.start, self.label = total, start, label
        self.interval, self.clock = interval, clock or progress_clock
        self.t0 = self.last_line = self.clock()
        self.text = ""

    def __enter__(self) -> "StatusLine":
        global _status
        if self.enabled and self.tty:
            _status = self
        return self

    def __exit__(self, *exc) -> None:
        global _status
        if _status is self:
            self.clear()
            _status = None

    def update(self, it: int, extra: str = "") -> None:
        """Iteration `it` is done; `extra` is appended (e.g. "loss 0.1234")."""
        if not self.enabled:
            return
        now = self.clock()
        if not self.tty and now - self.last_line < self.interval:
            return
        done = it - self.start
        todo = self.total - self.start
        el = now - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - it) / rate if rate > 0 else float("nan")
        frac = done / todo if todo > 0 else 1.0
        eta_s = "--:--" if eta != eta else _clock_text(eta)
        if not self.tty:
            self.last_line = now
            text = (f"progress {self.label}: iteration {it}/{self.total} ({100 * frac:.0f}%), {rate:.1f} it/s, "
                    f"ETA {eta_s}" + (f", {extra}" if extra else ""))
            record = logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, text, None, None)
            self._write(GlogFormatter().format(record) + "\n")
            return
        width = 24
        fill = int(round(frac * width))
        self.text = (f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {it}/{self.total} "
                     f"{rate:.1f} it/s ETA {eta_s} {extra}").rstrip()
        self.redraw()

    def clear(self) -> None:
        if self.enabled and self.tty and self.text:
            self._write("\r\x1b[K")

    def redraw(self) -> None:
        if self.enabled and self.tty and self.text:
            self._write("\r" + self.text + "\x1b[K")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:  # (the reader has gone: show nothing more, and tell the listeners as the log does)
            self.enabled = False
            _reader_gone()


def _clock_text(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    m, sec = divmod(int(seconds), 60)
    return "%d:%02d" % (m, sec) if m < 60 else "%d:%02d:%02d" % (m // 60, m % 60, sec)


_status: StatusLine | None = None
_configured = False


def setup_logging(level: int = logging.INFO, stream=None) -> None:
    """Send netcompress logs to `stream` (default: the current sys.stderr, as glog does) in glog
    format. Idempotent. Records still propagate, so applications and pytest can capture them."""
    global _configured
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    for h in logger.handlers:
        if getattr(h, "_netcompress", False):
            h.fixed_stream = stream
            h.setLevel(level)
            return
    handler = _StatusAwareHandler(stream)
    handler._netcompress = True  # type: ignore[attr-defined]
    handler.setFormatter(GlogFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    _configured = True
