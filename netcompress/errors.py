"""Errors that carry what the user needs: the file, line or layer, and what was expected.

Every error a user's input can cause is a `NetcompressError`: the command line prints its message
as one line and exits 1 (`netcompress.boundary`). Anything else reaching the command line is a bug
of netcompress, reported with the path of a saved traceback.
"""
from __future__ import annotations

import errno
import os

__all__ = ["NetcompressError", "SettingError", "FileError", "ProtoParseError", "NetDefinitionError",
           "WeightLoadError", "describe_os_error", "error_text"]


class NetcompressError(Exception):
    """Base class for errors caused by user input (files, prototxt, arguments)."""


class SettingError(NetcompressError):
    """An environment variable of netcompress's holds a value it does not take: no file is at fault, so a net
    whose set-up met it does not put its file's name before the message."""


# What an OS error means for the user, by errno (the C library's strerror is terse and names no fix).
_OS_REASONS = {
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of the path is not a folder (a '/' after a file name?)",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENAMETOOLONG: "file name too long (a name may have at most 255 bytes on most file systems)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "already exists",
    errno.EXDEV: "cannot move a file across file systems",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (a failing disk or a lost network mount?)",
}


def error_text(e: BaseException) -> str:
    """An exception's message as text: plyvel's (LevelDB's) errors, its IOError an OSError among them, hold
    bytes, which `str` would print as `b'...'`."""
    return e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)


def describe_os_error(e: OSError, action: str = "") -> str:
    """One clause for an OSError: `cannot write: no space left on the device`."""
    reason = _OS_REASONS.get(e.errno or -1) or (e.strerror or error_text(e)).lower()
    return f"cannot {action}: {reason}" if action else reason


class FileError(NetcompressError):
    """A file cannot be read or written: missing, not a regular file, too large, or an OS error.
    The message starts with the path."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {message}")

    @classmethod
    def from_os_error(cls, path: str | os.PathLike, e: OSError, action: str = "") -> "FileError":
        return cls(path, describe_os_error(e, action))


class ProtoParseError(FileError):
    """A prototxt or binary proto file could not be parsed."""

    def __init__(self, path: str, message: str, line: int | None = None, column: int | None = None):
        self.line, self.column = line, column
        where = path if line is None else f"{path}:{line}:{column}" if column else f"{path}:{line}"
        NetcompressError.__init__(self, f"{where}: {message}")
        self.path = path


class NetDefinitionError(NetcompressError):
    """A net definition is inconsistent (unknown type, missing bottom, bad parameter)."""


class WeightLoadError(NetcompressError):
    """Weights could not be copied into a net (blob count or shape mismatch)."""
