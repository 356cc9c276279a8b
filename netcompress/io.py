"""Reading and writing Caffe files: prototxt nets and solvers, .caffemodel, .binaryproto.

Every reader upgrades legacy content the way Caffe does (see `netcompress.upgrade`), and every
writer is atomic (a temporary file in the same folder, then a rename), so an interrupted write
never leaves a truncated model where a good one was.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import signal
import stat
import tempfile
import threading
import time
from io import StringIO
from typing import IO, Iterator, Sequence, TypeVar

import numpy as np
from google.protobuf import message as _pb_message
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from .errors import FileError, NetcompressError, ProtoParseError
from .proto import caffe_pb2 as pb, is_repeated

M = TypeVar("M", bound=_pb_message.Message)

__all__ = [
    "atomic_write", "atomic_file", "parse_text_proto", "read_text_proto", "write_text_proto",
    "read_binary_proto", "write_binary_proto", "read_net", "read_solver", "read_caffemodel",
    "write_caffemodel", "read_binaryproto_array", "write_binaryproto_array", "blob_to_array",
    "array_to_blob", "blob_shape", "check_input_file", "read_input_bytes", "read_input_text",
    "clean_stale_temporaries", "check_utf8_strings", "is_placeholder_blob", "MAX_TEXT_PROTO_BYTES",
    "MAX_BINARY_PROTO_BYTES", "max_text_proto_bytes", "decode_prototxt", "read_prototxt_text", "append_packed",
    "hdf5_name_problem", "decode_text", "TextDecodeError",
]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

#: The largest text prototxt read (bytes). Real nets and solvers are far smaller (ResNet-152's
#: deploy net is ~200 KB); the cap keeps a wrong file (a log, a dataset, a device) from being parsed
#: into gigabytes of messages. NETCOMPRESS_MAX_PROTOTXT_BYTES overrides it.
MAX_TEXT_PROTO_BYTES = 16 << 20
#: The largest binary proto (caffemodel, binaryproto, solverstate): protobuf's own limit, as Caffe's
#: kProtoReadBytesLimit.
MAX_BINARY_PROTO_BYTES = (1 << 31) - 1


def max_text_proto_bytes() -> int:
    """`MAX_TEXT_PROTO_BYTES`, or the NETCOMPRESS_MAX_PROTOTXT_BYTES environment variable."""
    env = os.environ.get("NETCOMPRESS_MAX_PROTOTXT_BYTES", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = -1
        if value <= 0:
            raise NetcompressError(f"NETCOMPRESS_MAX_PROTOTXT_BYTES must be a positive number of bytes, "
                                   f"got '{env}'")
        return value
    return MAX_TEXT_PROTO_BYTES


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _check_nul(path: str, error: type[FileError] = FileError) -> None:
    if "\0" in path:
        raise error(path.replace("\0", "\\0"), "a file name cannot contain a NUL byte")


def a_an(noun: str) -> str:
    """The indefinite article of `noun` as it is read out ("an image list", "an HDF5 file", "a caffemodel")."""
    return "an" if noun[:1].lower() in "aeiou" or noun.startswith(("HDF5", "LMDB", "MNIST", "SVG", "NPZ")) else "a"


def check_input_file(path: str | os.PathLike, what: str = "file", error: type[FileError] = FileError,
                     folder_ok: bool = False) -> os.stat_result:
    """Stat `path` (following symlinks) without opening it; raise `error` naming the path unless it
    is a regular file (or, with `folder_ok`, a folder).

    FIFOs, devices and sockets are refused before anything opens them: a FIFO blocks an open()
    forever, and /dev/zero or /dev/urandom never end."""
    path = os.fspath(path)
    _check_nul(path, error)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise error(path, "no such file") from None
        raise error.from_os_error(path, e, "read") from None
    if stat.S_ISDIR(st.st_mode):
        if folder_ok:
            return st
        held = " (it holds an LMDB, which a Data layer reads)" if os.path.isfile(os.path.join(path, "data.mdb")) \
            else " (it holds a LevelDB, which a Data layer reads)" if os.path.isfile(os.path.join(path, "CURRENT")) \
            else ""
        raise error(path, f"is a directory, expected {a_an(what)} {what}{held}")
    if not stat.S_ISREG(st.st_mode):
        raise error(path, f"is {_file_kind(st.st_mode)}, expected {a_an(what)} {what}: netcompress reads only "
                          "regular files (a pipe or a device may block or never end)")
    return st


def read_input_bytes(path: str | os.PathLike, what: str = "file", limit: int | None = None,
                     error: type[FileError] = FileError, limit_hint: str = "") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (errors name the path).

    The file is opened non-blocking and checked again once open, so a FIFO swapped in after the
    check cannot block the read."""
    path = os.fspath(path)
    st = check_input_file(path, what, error)
    if limit is not None and st.st_size > limit:
        raise error(path, f"is {st.st_size:,} bytes; {a_an(what)} {what} may have at most {limit:,} bytes{limit_hint}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error.from_os_error(path, e, "read") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(path, f"is not a regular file, expected {a_an(what)} {what}")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise error.from_os_error(path, e, "read") from None
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise error(path, f"has more than {limit:,} bytes; {a_an(what)} {what} may have at most {limit:,} bytes"
                          f"{limit_hint}")
    return data


class TextDecodeError(ValueError):
    """A text file's bytes are not UTF-8 text; the message says why (no path: the caller names the file)."""


UTF16_TEXT = "it is UTF-16 text (what Windows editors call 'Unicode'); save it as UTF-8"


def looks_utf16(data: bytes) -> bool:
    """Whether bytes holding NULs are UTF-16 text: its byte-order mark, or NULs at every other byte (ASCII)."""
    even, odd = data[0::2].count(0), data[1::2].count(0)
    return data[:2] in (b"\xff\xfe", b"\xfe\xff") or max(even, odd) > len(data) // 4 > 4 * min(even, odd)


def decode_text(data: bytes) -> str:
    """The UTF-8 text of a text file's bytes (an image list, a window file, a labels file), a UTF-8 byte-order
    mark skipped; `TextDecodeError` says "byte N is not UTF-8 text", or that the file is UTF-16 (whose
    NULs would otherwise decode, and make names like 'a\\x00.\\x00p\\x00n\\x00g')."""
    if b"\0" in data and looks_utf16(data):
        raise TextDecodeError(UTF16_TEXT)
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        kind = binary_kind(data)
        raise TextDecodeError(f"byte {e.start + skip} is not UTF-8 text{f'; it is {kind}, not text' if kind else ''}") \
            from None


_SIGNATURES = ((b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"\x89PNG\r\n\x1a\n", "a PNG image"),
               (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"BM", "a BMP image"),
               (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"\x93NUMPY", "a numpy .npy file"))


def binary_kind(data: bytes) -> str:
    """What the binary file `data` is, for a message ("an HDF5 file", "a PNG image", "an LMDB's data.mdb", and
    what `other_file_hint` knows: "a caffemodel (a net of 9 layers)", a zip), or "" when it is none of those."""
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[16:20] == b"\xde\xc0\xef\xbe":  # LMDB's meta page: its magic after the 16-byte page header
        return "an LMDB's data.mdb"
    hint = other_file_hint(data, advice=False)
    return hint[len("; it is "):] if hint else ""


def read_input_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of the regular file `path` (`read_input_bytes`, `decode_text`); text that is not
    UTF-8 is an error naming the path and why."""
    try:
        return decode_text(read_input_bytes(path, what))
    except TextDecodeError as e:
        raise FileError(path, f"{e} (expected {a_an(what)} {what})") from None


# -- atomic writes --------------------------------------------------------------------------------
# A writer writes `.NAME.XXXXXXXX.tmp` beside NAME (XXXXXXXX: 8 random characters of [a-z0-9_]),
# holds an exclusive flock on it while writing, and renames it onto NAME. A writer killed by SIGKILL
# (or by a crash of the machine) leaves its temporary file behind; the next write of the same NAME
# removes such files when all of these hold (so a concurrent writer's file is never touched):
#   - the name matches this writer's pattern for NAME exactly (NAME's own temporary files only);
#   - it is a regular file owned by this user and not modified for STALE_TMP_SECONDS (the moment
#     between a writer creating its file and locking it is covered by the age);
#   - nobody holds a lock on it (a live writer holds one for as long as it writes; the kernel drops
#     the lock of a dead process). Where locks are not supported the file is left alone.
# SIGTERM while writing (main thread, default SIGTERM action) removes the file, then terminates.

STALE_TMP_SECONDS = 60.0
_TMP_RANDOM = 8
_TMP_SUFFIX = ".tmp"


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _tmp_prefix(name: str, name_max: int) -> str:
    """`.NAME.`, NAME cut (on a character boundary) so the temporary name fits the file system."""
    room = name_max - 2 - _TMP_RANDOM - len(_TMP_SUFFIX)
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return "." + name + "."


def _stale_tmp_pattern(prefix: str) -> "re.Pattern[str]":
    return re.compile(re.escape(prefix) + "[a-z0-9_]{%d}" % _TMP_RANDOM + re.escape(_TMP_SUFFIX) + r"\Z")


def clean_stale_temporaries(path: str | os.PathLike, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Remove the temporary files that killed writers of `path` left (see the rule above); returns
    the paths removed."""
    try:
        import fcntl
    except ImportError:  # no flock here: liveness cannot be told, so nothing is removed
        return []
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    pattern = _stale_tmp_pattern(_tmp_prefix(os.path.basename(path), _name_max(folder)))
    removed = []
    try:
        names = [n for n in os.listdir(folder) if pattern.match(n)]
    except OSError:
        return removed
    now = time.time()
    for n in names:
        tmp = os.path.join(folder, n)
        try:
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid()
                    or now - st.st_mtime < max_age):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it, or locks are unsupported here: leave it
            # Still the file we checked (not replaced meanwhile)?
            cur = os.lstat(tmp)
            if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:
            pass
        finally:
            os.close(fd)
    if removed:
        from .log import get_logger
        get_logger("io").info("Removed %d temporary file(s) an interrupted write of %s left: %s",
                              len(removed), path, ", ".join(os.path.basename(r) for r in removed))
    return removed


def _write_target(path: str) -> str:
    """Where a write of `path` goes: `path`, or through a symlink its final target (the link is kept)."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)) or os.path.basename(path) in ("", ".", ".."):
        raise FileError(path, "ends with a folder separator or names a folder; expected a file name")
    if not os.path.islink(path):
        return path
    try:
        os.stat(path)  # follows the links: a loop raises ELOOP (realpath's strict mode is Python 3.10+)
    except FileNotFoundError:
        pass  # a dangling link: create its target
    except OSError as e:
        raise FileError.from_os_error(path, e, "write") from None
    return os.path.realpath(path)


class _Terminated(BaseException):
    """SIGTERM arrived while a file was being written (see atomic_write)."""


class _TermGuard:
    """While writing: SIGTERM raises _Terminated (so the temporary file is removed), and is
    re-delivered with its default action afterwards. Only on the main thread, and only when SIGTERM
    has its default action (an application's own handler is left alone)."""

    def __enter__(self) -> "_TermGuard":
        self.active = False
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, self._handler)
                    self.active = True
            except (ValueError, OSError):
                pass
        return self

    @staticmethod
    def _handler(signum, frame):
        raise _Terminated()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if exc_type is _Terminated:
                os.kill(os.getpid(), signal.SIGTERM)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` atomically (see `atomic_file`)."""
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"atomic_write: data must be bytes or str, got {type(data).__name__}")
    with atomic_file(path, text=isinstance(data, str)) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, text: bool = False) -> Iterator[IO]:
    """A file object to write `path` through, atomically: a temporary file in the same folder
    (opened "w+b", seekable, as h5py's file objects need; "w" with `text`), fsynced and renamed onto
    `path` when the block ends, removed if it raises.

    A symlink at `path` is written through (its target is replaced, the link kept). Temporary files
    of earlier, killed writes of `path` are removed first (rule above). OS errors become a
    `FileError` naming the path (read-only folder, disk full, name too long, ...)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    path = os.fspath(path)
    _check_nul(path)
    target = _write_target(path)
    folder = os.path.dirname(os.path.abspath(target))
    name = os.path.basename(target)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise FileError.from_os_error(folder, e, f"create the folder for {path}") from None
    try:
        st = os.stat(target)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENAMETOOLONG):  # a long name is reported below
            raise FileError.from_os_error(path, e, "write") from None
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise FileError(path, "is a directory, expected a file name to write")
    if st is not None and not stat.S_ISREG(st.st_mode):
        # Renaming onto it would replace a device or FIFO by a regular file (as root: /dev/null).
        raise FileError(path, f"is {_file_kind(st.st_mode)}: netcompress writes only regular files")
    name_max = _name_max(folder)
    if len(os.fsencode(name)) > name_max:
        raise FileError(path, f"cannot write: the file name has {len(os.fsencode(name))} bytes, the file "
                              f"system allows at most {name_max}")
    clean_stale_temporaries(target)
    with _TermGuard():
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(name, name_max), suffix=_TMP_SUFFIX, dir=folder)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "a live writer": see the rule above
            except OSError:
                pass
            with os.fdopen(fd, "w" if text else "w+b") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            try:  # an existing file keeps its mode; a new one gets what a plain open() would give
                perm = stat.S_IMODE(os.stat(target).st_mode)
            except OSError:
                umask = os.umask(0)
                os.umask(umask)
                perm = 0o666 & ~umask
            os.chmod(tmp, perm)
            os.replace(tmp, target)
            tmp = None
        except OSError as e:
            raise FileError.from_os_error(path, e, "write") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _read_bytes(path: str, limit: int = MAX_BINARY_PROTO_BYTES, what: str = "proto file",
                limit_hint: str = "") -> bytes:
    return read_input_bytes(path, what, limit, ProtoParseError, limit_hint)


_POS = re.compile(r"^(\d+):(\d+)\s*:\s*(.*)$", re.S)


def parse_text_proto(text: str, message: M, path: str = "<string>") -> M:
    """Parse protobuf text format into `message`; errors name `path`, line and column.

    As Caffe's ReadProtoFromTextFile (protobuf's TextFormat::Parse), a singular field given twice
    is an error (not "the last one wins")."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, col = getattr(e, "GetLine", lambda: None)(), getattr(e, "GetColumn", lambda: None)()
        msg = str(e)
        m = _POS.match(msg)
        if m:
            line, col, msg = int(m.group(1)), int(m.group(2)), m.group(3)
        expected = message.DESCRIPTOR.full_name
        other = _other_text_hint(text, expected)
        hint = other or _parse_hint(msg, message.DESCRIPTOR.file.pool)
        raise ProtoParseError(path, f"{msg}{hint} (while parsing a {expected})", line, col) from None
    return message


# Which file takes a file given in another's place, said as the command line's flags or as the Python calls
# (pycaffe's, and netcompress's own Net and Solver): `boundary.guarded` runs a command in "command line", and
# `netcompress pycaffe` runs its script back in "Python".
ADVICE: contextvars.ContextVar[str] = contextvars.ContextVar("netcompress_advice", default="Python")
_USE = {
    ("net", "command line"): "a solver names it in its net: field, and test and time take it with --model",
    ("net", "Python"): "a solver names it in its net: field, and Net(...) takes it",
    ("solver", "command line"): "train takes it with --solver",
    ("solver", "Python"): "get_solver(...) takes it",
    ("caffemodel", "command line"): "give weights with --weights, and resume from a .solverstate with --snapshot",
    ("caffemodel", "Python"): "give weights with Net(..., weights=...) or copy_from, and resume from a "
                              ".solverstate with Solver.restore",
    ("solver state", "command line"): "resume from it with --snapshot, or give its model with --weights",
    ("solver state", "Python"): "resume from it with Solver.restore, or give its model to copy_from",
}


def use_of(kind: str) -> str:
    """How to give a file of `kind` ("net", "solver", "caffemodel", "solver state"), for the caller's side."""
    return _USE[kind, ADVICE.get()]


@contextlib.contextmanager
def advice_for(side: str) -> Iterator[None]:
    """Inside, `use_of` speaks to `side`: "command line" or "Python"."""
    token = ADVICE.set(side)
    try:
        yield
    finally:
        ADVICE.reset(token)


def _other_text_kind(text: str, expected: str = "") -> tuple[str, str, _pb_message.Message | None]:
    """("net" or "solver", a description, the parsed message) when the prototxt `text` is a net given where a
    solver was expected or a solver given where a net (or a binary file) was; ("", "", None) otherwise."""
    for kind, message in (("net", pb.NetParameter), ("solver", pb.SolverParameter)):
        if message.DESCRIPTOR.full_name == expected:
            continue
        try:
            parsed = text_format.Parse(text, message())
        except (text_format.ParseError, ValueError):
            continue
        if kind == "net" and any(layer.name or layer.type for layer in (*parsed.layer, *parsed.layers)):
            n = len(parsed.layer) + len(parsed.layers)
            return kind, f"a net prototxt ({n} layer{'s' * (n != 1)})", parsed
        if kind == "solver" and (parsed.net or parsed.HasField("net_param") or parsed.train_net or parsed.base_lr):
            return kind, "a solver prototxt", parsed
    return "", "", None


DEFINITION_MAX_BYTES = 4 << 20  # (a weight-less net definition is small: ResNet-152's deploy net is ~200 KB)
_BLOBS_LINE = re.compile(rb"^[ \t]*blobs[ \t]*\{", re.M)


def definition_kind(data: bytes) -> str:
    """"a net prototxt (N layers)" when `data` is a net definition somebody wrote (a text net whose layers hold no
    weights), "a solver prototxt" for a solver; "" for anything else (a binary file, a model's text dump, a file
    larger than any definition). A dump's `blobs {` lines tell it apart before any parse (parsing a 10 MB dump
    takes ~10 s)."""
    if len(data) > DEFINITION_MAX_BYTES or _BLOBS_LINE.search(data):
        return ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return ""
    kind, what, parsed = _other_text_kind(text)
    if kind == "net" and any(len(layer.blobs) for layer in parsed.layer):
        return ""
    return what


def _other_text_hint(text: str, expected: str) -> str:
    kind, what, _ = _other_text_kind(text, expected)
    return f" It is {what}: {use_of(kind)}." if kind else ""


_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_NO_VALUE = re.compile(r'Enum type "([\w.]+)" has no value (named \w+|with number -?\d+)')


def _parse_hint(msg: str, pool) -> str:
    """What a misspelt field or enum value was likely meant to be: the closest field name of that message
    (`Did you mean kernel_size?`), or the enum's values."""
    import difflib

    try:
        m = _NO_FIELD.search(msg)
        if m:
            desc = pool.FindMessageTypeByName(m.group(1))
            close = difflib.get_close_matches(m.group(2), [f.name for f in desc.fields], n=1, cutoff=0.6)
            return f" Did you mean {close[0]}?" if close else ""
        m = _NO_VALUE.search(msg)
        if m:
            desc = pool.FindEnumTypeByName(m.group(1))
            return f" Its values: {', '.join(f'{v.name} ({v.number})' for v in desc.values)}."
    except KeyError:
        pass
    return ""


UTF8_BOM = b"\xef\xbb\xbf"


def _comment_start(line: str) -> int:
    """Where the comment of one prototxt line starts (the first `#` outside a quoted string), or
    its length. Text-format strings cannot span lines, so one line is enough to tell."""
    quote = None
    k = 0
    while k < len(line):
        c = line[k]
        if quote:
            if c == "\\":
                k += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return k
        k += 1
    return len(line)


def decode_prototxt(data: bytes, path: str) -> str:
    """The text of a prototxt file's bytes, read as Caffe's protobuf tokenizer reads them.

    A leading UTF-8 byte-order mark (Windows editors write one) is skipped, as protobuf 3's tokenizer
    does. Bytes that are not UTF-8 are allowed inside `#` comments, which the tokenizer skips unread
    (Caffe forks ship prototxts commented in GBK or Latin-1); they read as U+FFFD there. Anywhere else
    they are an error naming the line and column. A file with NUL bytes is UTF-16 text (said so) or binary."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    nul = data.find(b"\0")
    if nul >= 0:  # (valid UTF-8, but no text prototxt holds one: protobuf's tokenizer stops there)
        if looks_utf16(data):
            raise ProtoParseError(path, f"not a text prototxt: {UTF16_TEXT}, which Caffe's protobuf reads")
        raise ProtoParseError(path, f"not a text prototxt (byte {nul} is a NUL byte)"
                                    f"{other_file_hint(data) or '; is it a binary .caffemodel?'}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    for n, line in enumerate(lines):
        bad = [k for k, c in enumerate(line) if "\udc80" <= c <= "\udcff"]
        if not bad:
            continue
        cut = _comment_start(line)
        if bad[0] < cut:
            byte = ord(line[bad[0]]) - 0xDC00
            raise ProtoParseError(path, f"byte 0x{byte:02X} is not UTF-8 text; outside its # comments a "
                                        "prototxt must be UTF-8 (save the file as UTF-8)", n + 1, bad[0] + 1)
        lines[n] = line[:cut] + "".join("\ufffd" if "\udc80" <= c <= "\udcff" else c for c in line[cut:])
    return "\n".join(lines)


def read_prototxt_text(path: str, what: str = "text prototxt") -> str:
    """The text of the prototxt file `path` (a regular file of at most `max_text_proto_bytes()`), as
    `decode_prototxt` reads it."""
    data = _read_bytes(path, max_text_proto_bytes(), what,
                       " (set NETCOMPRESS_MAX_PROTOTXT_BYTES to raise the limit)")
    return decode_prototxt(data, path)


def read_text_proto(path: str, message: M) -> M:
    """Parse the text prototxt `path` (`read_prototxt_text`). A file of nothing but blanks and comments is an
    error for a net or a solver: protobuf reads it as an empty message, which ran as a net of no layers or failed
    on the first setting a solver lacks."""
    text = read_prototxt_text(path)
    kind = {"caffe.NetParameter": "net prototxt", "caffe.SolverParameter": "solver prototxt"}.get(
        message.DESCRIPTOR.full_name)
    if kind and all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise ProtoParseError(path, f"is empty{' but for comments' if text.strip() else ''}, expected "
                                    f"{a_an(kind)} {kind} (a copy or a write that did not finish?)")
    return parse_text_proto(text, message, path)


def _caffe_floats(values, double: bool) -> list[str]:
    """protobuf C++'s SimpleFtoa (floats) or SimpleDtoa (doubles) of each value: 6 (15) significant digits, or 9
    (17) where that does not read back as the same value; "%g" spells inf, -inf and nan as they do."""
    dtype, digits, more = (np.float64, 15, 17) if double else (np.float32, 6, 9)
    arr = np.asarray(values, dtype=dtype)
    texts = ["%.*g" % (digits, v) for v in arr.tolist()]
    with np.errstate(all="ignore"):
        back = np.array(texts, dtype=np.float64).astype(dtype)
    for i in np.flatnonzero(back != arr).tolist():
        texts[i] = "%.*g" % (more, arr[i])
    return texts


def _print_fields(message: _pb_message.Message, out: list[str], indent: int) -> None:
    pad = " " * indent
    for field, value in message.ListFields():
        name = f"[{field.full_name}]" if field.is_extension else field.name
        if field.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
            values = value if is_repeated(field) else (value,)
            double = field.cpp_type == FieldDescriptor.CPPTYPE_DOUBLE
            out.extend(f"{pad}{name}: {t}\n" for t in _caffe_floats(values, double))
            continue
        for v in (value if is_repeated(field) else (value,)):
            if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                out.append(f"{pad}{name} {{\n")
                _print_fields(v, out, indent + 2)
                out.append(f"{pad}}}\n")
            else:
                text = StringIO()
                text_format.PrintFieldValue(field, v, text)
                out.append(f"{pad}{name}: {text.getvalue()}\n")


def text_proto(message: _pb_message.Message) -> str:
    """`message` as protobuf text, as Caffe (protobuf C++) writes it in its files and logs: floats by SimpleFtoa
    (`lr_mult: 1`, `base_lr: 1e-05`; Python's text_format writes `lr_mult: 1.0`), the rest as text_format does."""
    out: list[str] = []
    _print_fields(message, out, 0)
    return "".join(out)


def write_text_proto(path: str, message: _pb_message.Message) -> None:
    atomic_write(path, text_proto(message))


def read_binary_proto(path: str, message: M) -> M:
    data = _read_bytes(path, what=f"binary {message.DESCRIPTOR.name}")
    if not data:  # (a valid empty message, but no solver state or mean blob is empty)
        raise ProtoParseError(path, f"is empty (0 bytes), expected a binary {message.DESCRIPTOR.full_name} (a copy "
                                    "or a write that did not finish?)")
    try:
        message.ParseFromString(data)
    except _pb_message.DecodeError as e:
        raise ProtoParseError(path, f"not a binary {message.DESCRIPTOR.full_name} ({e}){other_file_hint(data)}") \
            from None
    except UnicodeDecodeError as e:
        raise ProtoParseError(path, not_utf8_field(e)) from None
    check_utf8_strings(message, path)
    return message


def not_utf8_field(e: UnicodeDecodeError) -> str:
    """check_utf8_strings' words for a string field that is not UTF-8, where protobuf's parser raised (its
    pure-Python 3.x parser does; newer ones hand the bytes over and check_utf8_strings names the field's place)."""
    said = str(e)
    field = said.rsplit("in field: ", 1)[1] if "in field: " in said else "a string field"
    return f"{field} is not valid UTF-8 text ({bytes(e.object[:60])!r}): the file is corrupted"


def _parses_as(data: bytes, message: M) -> M | None:
    try:
        message.ParseFromString(data)
    except (_pb_message.DecodeError, UnicodeDecodeError):
        return None
    return message


def other_file_hint(data: bytes, advice: bool = True) -> str:
    """A clause saying what `data` is, when it is one of the files a user may give in another's place: a
    solver state where weights were expected (`--weights`), a caffemodel where a solver state was (`--snapshot`),
    netcompress's `.solverstate.nc.npz` sidecar, a net or solver prototxt; "" otherwise. With `advice`, it also
    says which flag (or, from Python, which call) takes the file. (Binary protos carry no type: protobuf keeps a
    field of an unexpected wire type as unknown, so a caffemodel even parses as an empty SolverState.)"""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    kind, what, _ = _other_text_kind(text) if text is not None else ("", "", None)
    if kind:
        what, use = f"{what}, a text file", use_of(kind)
    elif data[:4] == b"PK\x03\x04":
        what = "a zip file (a numpy .npz, such as netcompress's .solverstate.nc.npz sidecar)"
        use = "give the .caffemodel or the .solverstate itself"
    elif (net := _parses_as(data, pb.NetParameter())) is not None and \
            any(layer.name or layer.type for layer in (*net.layer, *net.layers)):
        n = len(net.layer) + len(net.layers)
        what = f"a caffemodel (a net of {n} layer{'s' * (n != 1)})"
        use = use_of("caffemodel")
    elif (state := _parses_as(data, pb.SolverState())) is not None and (state.learned_net or len(state.history)):
        what = f"a solver state (iteration {state.iter}, model \"{state.learned_net}\")"
        use = use_of("solver state")
    else:
        return ""
    return f"; it is {what}: {use}" if advice else f"; it is {what}"


_HOLDS: dict[tuple, bool] = {}


def message_holds(desc, types: tuple[int, ...], skip: tuple[str, ...] = ()) -> bool:
    """Whether messages of type `desc` can hold a field of one of the protobuf field `types`, at any depth
    (not looking inside the message types named in `skip`); cached by type."""
    key = (desc.full_name, types, skip)
    if key not in _HOLDS:
        _HOLDS[key] = False  # recursion guard
        _HOLDS[key] = any(f.type in types or (f.type == f.TYPE_MESSAGE and f.message_type.name not in skip
                                              and message_holds(f.message_type, types, skip))
                          for f in desc.fields)
    return _HOLDS[key]


def _has_strings(desc) -> bool:
    """Whether messages of this type can hold a string field, at any depth (BlobProto cannot)."""
    return message_holds(desc, (FieldDescriptor.TYPE_STRING,))


def check_utf8_strings(message: _pb_message.Message, path: str) -> None:
    """Raise `ProtoParseError` naming the field when a string field of a parsed binary proto is not
    UTF-8 (protobuf hands such proto2 strings over as bytes; no prototxt could name them)."""
    def walk(msg, where: str) -> None:
        for fd, value in msg.ListFields():
            values = value if is_repeated(fd) else [value]
            if fd.type == fd.TYPE_STRING:
                for k, v in enumerate(values):
                    if isinstance(v, bytes):
                        idx = f"[{k}]" if is_repeated(fd) else ""
                        raise ProtoParseError(path, f"{where}{fd.name}{idx} is not valid UTF-8 text "
                                                    f"({v[:60]!r}): the file is corrupted")
            elif fd.type == fd.TYPE_MESSAGE and _has_strings(fd.message_type):
                for k, v in enumerate(values):
                    idx = f"[{k}]" if is_repeated(fd) else ""
                    name = getattr(v, "name", "") if fd.message_type.fields_by_name.get("name") else ""
                    label = f" '{name}'" if isinstance(name, str) and name else ""
                    walk(v, f"{where}{fd.name}{idx}{label}.")

    if _has_strings(message.DESCRIPTOR):
        walk(message, "")


def write_binary_proto(path: str, message: _pb_message.Message) -> None:
    """Write `message` in protobuf's binary format, atomically. A message of more than
    `MAX_BINARY_PROTO_BYTES` is refused before anything is written: no protobuf reader, Caffe's
    included, could read it back (protobuf's own encoder fails past 2 GiB)."""
    try:
        data = message.SerializeToString(deterministic=True)
    except _pb_message.EncodeError:
        data = None
    if data is None or len(data) > MAX_BINARY_PROTO_BYTES:
        raise FileError(path, f"cannot write: the {message.DESCRIPTOR.name} has more than {MAX_BINARY_PROTO_BYTES:,} "
                              "bytes, the most a binary proto may have (protobuf's limit; Caffe could not read it "
                              "either)")
    atomic_write(path, data)


# ----------------------------------------------------------------------------------------------
# Nets, solvers, models
# ----------------------------------------------------------------------------------------------

def read_net(path: str, upgrade: bool = True) -> pb.NetParameter:
    """Read a net prototxt (text), upgrading legacy formats as Caffe does."""
    from .upgrade import upgrade_net

    net = read_text_proto(path, pb.NetParameter())
    return upgrade_net(net, path) if upgrade else net


def read_solver(path: str, upgrade: bool = True) -> pb.SolverParameter:
    """Read a solver prototxt (text), upgrading `solver_type` to `type` as Caffe does."""
    from .upgrade import upgrade_solver

    solver = read_text_proto(path, pb.SolverParameter())
    return upgrade_solver(solver, path) if upgrade else solver


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike, what: str = "file") -> bool:
    """Whether the regular file `path` starts with HDF5's signature (Caffe's `.caffemodel.h5`,
    `.solverstate.h5`); Caffe writes no user block, so offset 0 is where it is."""
    check_input_file(path, what)
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError as e:
        raise FileError.from_os_error(os.fspath(path), e, "read") from None


def read_hdf5_weights(path: str) -> pb.NetParameter:
    """Caffe's HDF5 weights (Net::ToHDF5: a `/data/<layer>/<blob index>` dataset for each blob a layer
    owns) as a NetParameter of layer names and blobs, in the file's (name) order, as
    CopyTrainedLayersFromHDF5 reads them. A blob a layer shares with an earlier layer, which Caffe
    does not write, is an empty BlobProto at its index (`Net.copy_from` skips it for a shared blob
    and refuses it for an owned one, as Caffe)."""
    import h5py

    check_input_file(path, "caffemodel")
    net = pb.NetParameter()
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                hint = (f"; it is an HDF5 solver state: {use_of('solver state')}"
                        if all(k in f for k in ("iter", "current_step", "history")) else "")
                raise ProtoParseError(path, f"an HDF5 file without Caffe's /data group (not a .caffemodel.h5){hint}")

            def layer_groups(group, prefix: str):
                """(name, group) of each layer: a group's digit-named datasets are its blobs; its subgroups
                are layers whose names go on with '/' (nested groups that netcompress wrote for a name with
                '/' before it refused them: they load)."""
                for name in group:
                    child = group[name]
                    if not isinstance(child, h5py.Group):
                        raise ProtoParseError(path, f"/data/{prefix}{name} is not a layer's group of blobs 0, 1, ...")
                    blobs = [k for k in child if isinstance(child[k], h5py.Dataset)]
                    if not all(k.isdigit() for k in blobs):
                        raise ProtoParseError(path, f"/data/{prefix}{name} is not a layer's group of blobs 0, 1, ...")
                    subgroups = [k for k in child if k not in blobs]
                    if blobs or not subgroups:
                        yield prefix + name, child, blobs
                    if subgroups:
                        yield from layer_groups({k: child[k] for k in subgroups}, f"{prefix}{name}/")

            for name, group, blobs in layer_groups(data, ""):
                lp = net.layer.add(name=name)
                for j in range(max((int(k) + 1 for k in blobs), default=0)):
                    blob = lp.blobs.add()
                    if str(j) in blobs:
                        array_to_blob(np.asarray(group[str(j)], dtype=np.float32), blob)
    except (OSError, ValueError, TypeError) as e:
        raise ProtoParseError(path, f"not a readable HDF5 weights file ({e})") from None
    return net


def hdf5_name_problem(names) -> str | None:
    """Why Caffe's HDF5 weights cannot hold these layer names, or None: a group's name is a path in
    HDF5, so a `/` in a layer name (GoogLeNet's `conv1/7x7_s2`) nests groups that no reader finds by
    the layer's name (Caffe's Net::ToHDF5 fails on it; netcompress wrote the nested groups and lost
    the layer at the next load), and `.` names the group itself."""
    for name in names:
        if "/" in name:
            return (f"layer '{name}': Caffe's HDF5 weights cannot hold a layer name with '/' (HDF5 reads it as a path "
                    "of groups; Caffe's own writer fails on it too): save as a binary .caffemodel "
                    "(snapshot_format: BINARYPROTO)")
        if name in (".", ""):
            return f"layer '{name}': Caffe's HDF5 weights cannot hold this layer name (HDF5 names no group so)"
    return None


def write_hdf5_weights(path: str, layers: Sequence[tuple[str, Sequence[np.ndarray | None]]],
                       diffs: Sequence[Sequence[np.ndarray]] | None = None) -> None:
    """Write Caffe's HDF5 weights atomically: for each (layer name, blobs), the group `/data/<name>`
    with a float32 dataset per blob that is not None (None: a blob shared with an earlier layer);
    with `diffs`, `/diff/<name>` with every blob's diff, as Net::ToHDF5 with write_diff."""
    import h5py

    bad = hdf5_name_problem(name for name, _ in layers)
    if bad:
        raise FileError(path, bad)
    with atomic_file(path) as f, h5py.File(f, "w") as h:
        data = h.create_group("data")
        diff = h.create_group("diff") if diffs is not None else None
        for i, (name, blobs) in enumerate(layers):
            if name in data:
                raise FileError(path, f"two layers are named '{name}'; Caffe's HDF5 weights hold one group "
                                      "per layer name (save as a binary .caffemodel instead)")
            g = data.create_group(name)
            for j, a in enumerate(blobs):
                if a is not None:
                    g.create_dataset(str(j), data=np.asarray(a, dtype=np.float32))
            if diff is not None:
                gd = diff.create_group(name)
                for j, a in enumerate(diffs[i]):
                    gd.create_dataset(str(j), data=np.asarray(a, dtype=np.float32))


def read_caffemodel(path: str, upgrade: bool = True) -> pb.NetParameter:
    """Read a binary NetParameter (.caffemodel), or Caffe's HDF5 weights (`read_hdf5_weights`; told apart
    by content, as Caffe's CopyTrainedLayersFrom does)."""
    from .upgrade import upgrade_net

    if is_hdf5(path, "caffemodel"):
        return read_hdf5_weights(path)
    data = _read_bytes(path, what="caffemodel")
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except _pb_message.DecodeError as e:
        raise ProtoParseError(path, f"not a binary caffemodel (NetParameter): {e}{other_file_hint(data)}") from None
    except UnicodeDecodeError as e:
        raise ProtoParseError(path, not_utf8_field(e)) from None
    check_utf8_strings(net, path)
    return upgrade_net(net, path) if upgrade else net


def write_caffemodel(path: str, net: pb.NetParameter) -> None:
    """Write a NetParameter as a binary .caffemodel, atomically and deterministically."""
    write_binary_proto(path, net)


# ----------------------------------------------------------------------------------------------
# Blobs
# ----------------------------------------------------------------------------------------------

def is_placeholder_blob(blob: pb.BlobProto) -> bool:
    """Whether `blob` is `read_hdf5_weights`' stand-in for a blob the file does not hold: no shape, no
    legacy dimensions, no values (checked field by field: serializing a large blob to size it would
    cost as much as reading it)."""
    return not (blob.HasField("shape") or len(blob.data) or len(blob.double_data) or blob.HasField("num")
                or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"))


def blob_shape(blob: pb.BlobProto) -> tuple[int, ...]:
    """Shape of a BlobProto: `shape.dim`, or the legacy num/channels/height/width.

    Caffe writes a 0-d blob (PReLU `channel_shared`, Scale/Bias `num_axes: 0`) with neither, and
    one value: that is shape (). A shape-less blob of another count is read as 1-d (lenient).
    """
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    n = len(blob.double_data) or len(blob.data)
    return () if n == 1 else (n,)


def blob_to_array(blob: pb.BlobProto, diff: bool = False) -> np.ndarray:
    """BlobProto to a numpy array of its shape (float32, or float64 for double_data)."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ValueError(f"blob shape {list(shape)} has a negative dimension")
    if diff:
        vals = blob.double_diff if len(blob.double_diff) else blob.diff
        dtype = np.float64 if len(blob.double_diff) else np.float32
    else:
        vals = blob.double_data if len(blob.double_data) else blob.data
        dtype = np.float64 if len(blob.double_data) else np.float32
    arr = np.asarray(vals, dtype=dtype)
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise ValueError(f"blob has {arr.size} values but its shape {list(shape)} holds {count}")
    return arr.reshape(shape)


def array_to_blob(arr, blob: pb.BlobProto | None = None, diff=None) -> pb.BlobProto:
    """Numpy array or tensor to a BlobProto with `shape` and float32 `data` (as Caffe writes)."""
    blob = pb.BlobProto() if blob is None else blob
    a = _to_numpy(arr)
    blob.Clear()
    if a.ndim:  # Caffe's Blob::ToProto writes no shape for a 0-d blob
        blob.shape.dim.extend(int(d) for d in a.shape)
    double = a.dtype == np.float64
    append_packed(blob, 8 if double else 5, a, "<f8" if double else "<f4")  # double_data or data
    if diff is not None:
        d = _to_numpy(diff)
        double = d.dtype == np.float64
        append_packed(blob, 9 if double else 6, d, "<f8" if double else "<f4")  # double_diff or diff
    return blob


PACKED_CHUNK_BYTES = 1 << 28


def _varint(v: int) -> bytes:
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def append_packed(message: _pb_message.Message, number: int, values, dtype: str) -> None:
    """Append `values` (any array-like) to the packed repeated float or double field `number` of
    `message`, as `field.extend(values)` would, bit for bit.

    The values go in as their wire bytes (one packed record per 256 MiB), where `extend(a.tolist())`
    made a Python float of every value first: 6x slower, and about 32 bytes of memory a value (a
    500-million-value blob needed 16 GiB to be written)."""
    flat = np.ascontiguousarray(np.asarray(values).reshape(-1), dtype=dtype)
    raw = memoryview(flat).cast("B")
    tag = _varint(number << 3 | 2)
    step = PACKED_CHUNK_BYTES - PACKED_CHUNK_BYTES % flat.itemsize
    for start in range(0, len(raw), step):
        chunk = raw[start:start + step]
        message.MergeFromString(b"".join((tag, _varint(len(chunk)), chunk)))


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        x = x.numpy()
    x = np.asarray(x)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # (which would make 0-d 1-d)


def read_binaryproto_array(path: str) -> np.ndarray:
    """Read a mean `.binaryproto` (a BlobProto) as an array (e.g. 1xCxHxW)."""
    blob = read_binary_proto(path, pb.BlobProto())
    if not len(blob.data) and not len(blob.double_data):  # (a caffemodel or solver state parses as a BlobProto)
        hint = other_file_hint(read_input_bytes(path, "binaryproto"))
        if hint:
            raise ProtoParseError(path, f"not a .binaryproto blob{hint}")
    try:
        return blob_to_array(blob)
    except ValueError as e:
        raise ProtoParseError(path, str(e)) from None


def write_binaryproto_array(path: str, arr) -> None:
    """Write an array as a `.binaryproto` BlobProto (shape and data), atomically.

    4-D arrays also carry the legacy num/channels/height/width, which old tools read."""
    a = _to_numpy(arr)
    blob = array_to_blob(a)
    if a.ndim == 4:
        blob.num, blob.channels, blob.height, blob.width = (int(d) for d in a.shape)
    write_binary_proto(path, blob)
