"""Errors that carry what the user needs: the file, line or layer, and what was expected."""
from __future__ import annotations


class NetcompressError(Exception):
    """Base class for errors caused by user input (files, prototxt, arguments)."""


class ProtoParseError(NetcompressError):
    """A prototxt or binary proto file could not be parsed."""

    def __init__(self, path: str, message: str, line: int | None = None, column: int | None = None):
        self.path, self.line, self.column = path, line, column
        where = path if line is None else f"{path}:{line}:{column}" if column else f"{path}:{line}"
        super().__init__(f"{where}: {message}")


class NetDefinitionError(NetcompressError):
    """A net definition is inconsistent (unknown type, missing bottom, bad parameter)."""


class WeightLoadError(NetcompressError):
    """Weights could not be copied into a net (blob count or shape mismatch)."""
