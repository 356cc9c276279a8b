"""pycaffe's building blocks: `Blob`, `BlobVec`, `Layer` (the base of a Python layer), `TRAIN` / `TEST`, and the
module-level state that pycaffe keeps in Caffe's singleton (CPU or GPU mode, the device, the random seed, the
solver count and rank of a multi-process run).

Blobs hold numpy arrays, as pycaffe's do: `blob.data` and `blob.diff` are arrays to write into
(`top[0].data[...] = x`), not attributes to assign; `blob.reshape(*shape)` gives a blob of a new shape (its
values then undefined, zeros here, as Caffe's may be anything). A net's blobs (`netcompress.pycaffe.net`)
subclass `Blob` and keep their arrays coherent with the net's tensors.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..layers.base import INT_MAX  # (a Caffe blob counts its values in an int)
from ..proto import caffe_pb2 as _pb
from ..rng import CaffeRNG

__all__ = ["Blob", "BlobVec", "Layer", "TRAIN", "TEST", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "device", "net_rng", "solver_count", "set_solver_count", "solver_rank",
           "set_solver_rank", "set_multiprocess"]

TRAIN: int = _pb.TRAIN
TEST: int = _pb.TEST


MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes


def check_dims(shape: tuple, who: str = "Blob.reshape") -> tuple[int, ...]:
    """`shape` as a tuple of ints, or a ValueError: Caffe's Blob::Reshape takes non-negative integers."""
    dims = []
    for d in shape:
        if isinstance(d, (bool, float)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"{who} takes non-negative integer dimensions, got {shape!r}")
        dims.append(int(d))
    if len(dims) > MAX_BLOB_AXES:
        raise ValueError(f"{who}: a blob has at most {MAX_BLOB_AXES} axes (Caffe's kMaxBlobAxes), got {len(dims)}")
    count = 1
    for d in dims:  # (Caffe's Blob::Reshape: each axis against the count so far)
        if d > INT_MAX or count and d > INT_MAX // count:
            raise ValueError(f"{who}: blob size exceeds INT_MAX: {list(dims)} (a Caffe blob holds at most {INT_MAX} "
                             "values, each axis checked against the axes before it)")
        count *= d
    return tuple(dims)


def real_array(arr, who: str) -> np.ndarray:
    """`arr` as an array of real numbers (an object array of numbers as float64), refusing complex values (numpy
    would drop their imaginary parts with a warning) and strings: a TypeError naming `who`."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{who} takes real numbers, got an array of {arr.dtype}")
    return arr


def two_dims(who: str, what: str, dims) -> tuple[int, int]:
    """(height, width) as two positive integers, or a ValueError naming the function and argument."""
    try:
        values = [np.asarray(d).item() for d in dims]
    except (TypeError, ValueError):
        values = None
    if (values is None or len(values) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and v > 0
                       for v in values)):
        raise ValueError(f"{who} takes {what} as (height, width), two positive integers; got {dims!r}")
    return int(values[0]), int(values[1])


class Blob:
    """A Caffe blob: `data` and `diff`, two arrays of one shape."""

    def __init__(self, shape: tuple[int, ...] = (), dtype: np.dtype | type = np.float32):
        self._dtype = np.dtype(dtype)
        self._data = np.zeros((), self._dtype)
        self._diff = np.zeros((), self._dtype)
        # Where `data` comes from when it is another object's memory (a Python layer's parameter: the net's
        # tensor), else None
        self._source: Callable[[], np.ndarray] | None = None
        self.reshape(*shape)

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob.reshape(*dims): keeps the arrays when the shape is the same."""
        dims = check_dims(shape)
        if self._source is not None:
            if dims == self.shape:
                return
            self._source = None  # a new shape: the blob's own memory from here on
        if dims != self._data.shape:
            self._data = np.zeros(dims, self._dtype)
            self._diff = np.zeros(dims, self._dtype)

    @property
    def data(self) -> np.ndarray:
        return self._source() if self._source is not None else self._data

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def _legacy(self, index: int) -> int:
        # Caffe's LegacyShape: the 4-D accessors of a blob of at most 4 axes, 1 past its last axis
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, this one has shape "
                             f"{shape}")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class BlobVec(list):
    """A layer's parameter blobs (`self.blobs`): `add_blob(*shape)` appends one, which the solver then trains."""

    def add_blob(self, *shape: int) -> None:
        self.append(Blob(shape))


class Layer:
    """Base class of a Caffe Python layer. Caffe constructs it with the layer's LayerParameter, then sets
    `param_str` and `phase` (`caffe.TRAIN` or `caffe.TEST`) and calls `setup(bottom, top)`; before every
    forward it calls `reshape(bottom, top)`; `backward(top, propagate_down, bottom)` writes the bottoms' diffs
    (and its blobs' diffs) from the tops' diffs. bottom and top are lists of Blob."""

    def __init__(self, param: _pb.LayerParameter | None = None):
        self.blobs = BlobVec()
        self.param_str = ""
        self.phase = TRAIN

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define reshape(bottom, top)")

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define forward(bottom, top)")

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define backward(top, propagate_down, bottom)")


# -- Caffe's singleton: mode, device, random seed ---------------------------------------------------------------
_state: dict = {"gpu": False, "device": 0, "seed": None, "rng": None, "solver_count": 1, "solver_rank": 0,
                "multiprocess": False}


def set_mode_cpu() -> None:
    """Nets and solvers created from now on live on the CPU (pycaffe's default)."""
    _state["gpu"] = False


def set_mode_gpu() -> None:
    """Nets and solvers created from now on live on the GPU chosen by `set_device` (0 by default). As in a
    CPU-only Caffe, asking works anywhere; creating a net then fails where there is no CUDA device."""
    _state["gpu"] = True


def set_device(device_id: int) -> None:
    """The GPU that GPU-mode nets and solvers use (Caffe::SetDevice)."""
    if isinstance(device_id, bool) or not isinstance(device_id, (int, np.integer)) or device_id < 0:
        raise ValueError(f"set_device takes a non-negative device number, got {device_id!r}")
    _state["device"] = int(device_id)


def set_random_seed(seed: int) -> None:
    """Caffe::set_random_seed: the fillers of nets created from now on draw from one stream seeded with `seed`
    (continued from net to net, as Caffe's one generator), and torch's generator is seeded too (the layers that
    draw at run time, e.g. Dropout, seed theirs from it)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"set_random_seed takes an integer seed, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:  # (a negative one was an unseeded, random stream)
        raise ValueError(f"set_random_seed takes a seed from 0 to {2**32 - 1} (Caffe's unsigned int), got {seed}")
    _state["seed"] = seed
    _state["rng"] = CaffeRNG(seed)
    torch.manual_seed(seed)


def device() -> torch.device:
    """The device of the current mode; a clear error in GPU mode without a CUDA device."""
    if not _state["gpu"]:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("caffe.set_mode_gpu() was called, but torch sees no CUDA device (Caffe: \"Cannot use "
                           "GPU in CPU-only Caffe\"); call caffe.set_mode_cpu()")
    n = torch.cuda.device_count()
    if _state["device"] >= n:
        raise RuntimeError(f"caffe.set_device({_state['device']}): only {n} CUDA device(s) are visible")
    return torch.device("cuda", _state["device"])


def _non_negative(value, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{who} takes a non-negative integer, got {value!r}")
    return int(value)


def solver_count() -> int:
    """How many solvers train together (Caffe::solver_count; 1 unless a script such as python/train.py sets it)."""
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    """Solvers created from now on are one of `count` that train together: each reads its share of a Data
    layer's records (Caffe's DataLayer::Skip), and only rank 0 tests, logs and snapshots. `caffe.NCCL` then
    averages their gradients."""
    count = _non_negative(count, "set_solver_count")
    if count == 0:
        raise ValueError("set_solver_count takes a count of at least 1, got 0")
    _state["solver_count"] = count


def solver_rank() -> int:
    """This process's solver among `solver_count()` (Caffe::solver_rank)."""
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _state["solver_rank"] = _non_negative(rank, "set_solver_rank")


def set_multiprocess(value: bool) -> None:
    """Caffe::set_multiprocess: the solvers run in separate processes (python/train.py; caffe.NCCL sets it)."""
    _state["multiprocess"] = bool(value)


def net_rng() -> tuple[int | None, CaffeRNG | None]:
    """(seed, stream) for a new net: the stream of `set_random_seed`, or (None, None) for a fresh random one."""
    return _state["seed"], _state["rng"]
