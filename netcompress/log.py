"""Caffe-style (glog) logging.

Lines look like Caffe's, `I1122 04:44:21.110855 26966 net.py:136] Top shape: 64 20 24 24 (737280)`,
so Caffe's own log parsers (tools/extra/parse_log.py) and users' scripts keep working.
"""
from __future__ import annotations

import logging
import os
import sys
import time

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
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return prefix + msg


def get_logger(name: str | None = None) -> logging.Logger:
    """The package logger (or a child of it)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


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


class StatusLine:
    """A one-line progress display on an interactive terminal (iterations/s and ETA).

    Log records printed meanwhile go above it. Does nothing when the stream is not a TTY, so
    logs written to files and pipes stay exactly Caffe's.
    """

    def __init__(self, total: int, start: int = 0, stream=None, label: str = "train"):
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.start, self.label = total, start, label
        self.t0 = time.time()
        self.text = ""

    def __enter__(self) -> "StatusLine":
        global _status
        if self.enabled:
            _status = self
        return self

    def __exit__(self, *exc) -> None:
        global _status
        if _status is self:
            self.clear()
            _status = None

    def update(self, it: int, extra: str = "") -> None:
        if not self.enabled:
            return
        done = it - self.start
        todo = self.total - self.start
        el = time.time() - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - it) / rate if rate > 0 else float("nan")
        frac = done / todo if todo > 0 else 1.0
        width = 24
        fill = int(round(frac * width))
        eta_s = "--:--" if eta != eta else "%d:%02d" % divmod(int(eta), 60)
        self.text = (f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {it}/{self.total} "
                     f"{rate:.1f} it/s ETA {eta_s} {extra}").rstrip()
        self.redraw()

    def clear(self) -> None:
        if self.enabled and self.text:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def redraw(self) -> None:
        if self.enabled and self.text:
            self.stream.write("\r" + self.text + "\x1b[K")
            self.stream.flush()


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
