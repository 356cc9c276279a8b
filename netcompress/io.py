"""Reading and writing Caffe files: prototxt nets and solvers, .caffemodel, .binaryproto.

Every reader upgrades legacy content the way Caffe does (see `netcompress.upgrade`), and every
writer is atomic (a temporary file in the same folder, then a rename), so an interrupted write
never leaves a truncated model where a good one was.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import TypeVar

import numpy as np
from google.protobuf import message as _pb_message
from google.protobuf import text_format

from .errors import ProtoParseError
from .proto import caffe_pb2 as pb

M = TypeVar("M", bound=_pb_message.Message)

__all__ = [
    "atomic_write", "parse_text_proto", "read_text_proto", "write_text_proto",
    "read_binary_proto", "write_binary_proto", "read_net", "read_solver", "read_caffemodel",
    "write_caffemodel", "read_binaryproto_array", "write_binaryproto_array", "blob_to_array",
    "array_to_blob", "blob_shape",
]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` atomically: temp file in the same folder, fsync, rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    mode = "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w"
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ProtoParseError(path, "no such file") from None
    except IsADirectoryError:
        raise ProtoParseError(path, "is a directory, expected a file") from None


_POS = re.compile(r"^(\d+):(\d+)\s*:\s*(.*)$", re.S)


def parse_text_proto(text: str, message: M, path: str = "<string>") -> M:
    """Parse protobuf text format into `message`; errors name `path`, line and column."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        line, col = getattr(e, "GetLine", lambda: None)(), getattr(e, "GetColumn", lambda: None)()
        msg = str(e)
        m = _POS.match(msg)
        if m:
            line, col, msg = int(m.group(1)), int(m.group(2)), m.group(3)
        expected = message.DESCRIPTOR.full_name
        raise ProtoParseError(path, f"{msg} (while parsing a {expected})", line, col) from None
    return message


def read_text_proto(path: str, message: M) -> M:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtoParseError(path, f"not a text prototxt (byte {e.start} is not UTF-8); "
                                    "is it a binary .caffemodel?") from None
    return parse_text_proto(text, message, path)


def write_text_proto(path: str, message: _pb_message.Message) -> None:
    atomic_write(path, text_format.MessageToString(message))


def read_binary_proto(path: str, message: M) -> M:
    data = _read_bytes(path)
    try:
        message.ParseFromString(data)
    except _pb_message.DecodeError as e:
        raise ProtoParseError(path, f"not a binary {message.DESCRIPTOR.full_name} ({e})") from None
    return message


def write_binary_proto(path: str, message: _pb_message.Message) -> None:
    atomic_write(path, message.SerializeToString(deterministic=True))


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


def read_caffemodel(path: str, upgrade: bool = True) -> pb.NetParameter:
    """Read a binary NetParameter (.caffemodel). A text prototxt with weights is accepted too."""
    from .upgrade import upgrade_net

    data = _read_bytes(path)
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except _pb_message.DecodeError as e:
        raise ProtoParseError(path, f"not a binary caffemodel (NetParameter): {e}") from None
    return upgrade_net(net, path) if upgrade else net


def write_caffemodel(path: str, net: pb.NetParameter) -> None:
    """Write a NetParameter as a binary .caffemodel, atomically and deterministically."""
    write_binary_proto(path, net)


# ----------------------------------------------------------------------------------------------
# Blobs
# ----------------------------------------------------------------------------------------------

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
    if a.dtype == np.float64:
        blob.double_data.extend(a.ravel().tolist())
    else:
        blob.data.extend(a.astype(np.float32, copy=False).ravel().tolist())
    if diff is not None:
        d = _to_numpy(diff)
        if d.dtype == np.float64:
            blob.double_diff.extend(d.ravel().tolist())
        else:
            blob.diff.extend(d.astype(np.float32, copy=False).ravel().tolist())
    return blob


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
