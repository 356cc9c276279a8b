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


_configured = False


def setup_logging(level: int = logging.INFO, stream=None) -> None:
    """Send netcompress logs to `stream` (stderr, as glog does) in glog format. Idempotent."""
    global _configured
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if _configured:
        for h in logger.handlers:
            if getattr(h, "_netcompress", False):
                h.setStream(stream or sys.stderr)
                h.setLevel(level)
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._netcompress = True  # type: ignore[attr-defined]
    handler.setFormatter(GlogFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.propagate = False
    _configured = True
