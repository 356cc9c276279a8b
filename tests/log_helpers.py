"""Capturing netcompress's log records in tests (importable from any test: tests/ is on the path), whatever
handlers and level the logging set-up of earlier tests left."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator


class LogRecords(logging.Handler):
    """The INFO-and-above records of the netcompress logger that `keep` accepts, and their messages."""

    def __init__(self, keep: Callable[[logging.LogRecord], bool] = lambda r: True):
        super().__init__(logging.INFO)
        self.keep = keep
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.keep(record):
            self.records.append(record)
            self.lines.append(record.getMessage())

    def clear(self) -> None:
        self.records.clear()
        self.lines.clear()


@contextlib.contextmanager
def netcompress_log(keep: Callable[[logging.LogRecord], bool] = lambda r: True) -> Iterator[LogRecords]:
    logger = logging.getLogger("netcompress")
    h, old = LogRecords(keep), logger.level
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    try:
        yield h
    finally:
        logger.removeHandler(h)
        logger.setLevel(old)
