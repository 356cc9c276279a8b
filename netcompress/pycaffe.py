"""The part of pycaffe that a Caffe Python layer uses: `caffe.Layer`, its blobs and `caffe.TRAIN` / `caffe.TEST`.

A prototxt layer of type "Python" names a module and a class written for pycaffe (`import caffe`, a subclass of
`caffe.Layer` with setup/reshape/forward/backward over lists of blobs). Where no other `caffe` module is imported,
netcompress makes this module importable as `caffe` while it imports the layer's module (layers/python.py), so
such files run unchanged. Only this much of pycaffe is here: `caffe.Net`, `caffe.io`, `caffe.proto` and the
solvers are not (a layer module that needs them fails to import, with an error naming the layer).

Blobs hold numpy arrays, as pycaffe's do: `blob.data` and `blob.diff` are arrays to write into
(`top[0].data[...] = x`), not attributes to assign; `blob.reshape(*shape)` gives a blob of a new shape (its
values then undefined, zeros here, as Caffe's may be anything).
"""
from __future__ import annotations

import numpy as np

from .proto import caffe_pb2 as _pb

__all__ = ["Blob", "BlobVec", "Layer", "TRAIN", "TEST"]

TRAIN: int = _pb.TRAIN
TEST: int = _pb.TEST


class Blob:
    """A Caffe blob: `data` and `diff`, two arrays of one shape."""

    def __init__(self, shape: tuple[int, ...] = (), dtype: np.dtype | type = np.float32):
        self._dtype = np.dtype(dtype)
        self._data = np.zeros((), self._dtype)
        self._diff = np.zeros((), self._dtype)
        self.reshape(*shape)

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob.reshape(*dims): keeps the arrays when the shape is the same."""
        dims = []
        for d in shape:
            if isinstance(d, (bool, float)) or not isinstance(d, (int, np.integer)) or d < 0:
                raise ValueError(f"Blob.reshape takes non-negative integer dimensions, got {shape!r}")
            dims.append(int(d))
        if tuple(dims) != self._data.shape:
            self._data = np.zeros(dims, self._dtype)
            self._diff = np.zeros(dims, self._dtype)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def _legacy(self, index: int) -> int:
        # Caffe's LegacyShape: the 4-D accessors of a blob of at most 4 axes, 1 past its last axis
        if self._data.ndim > 4:
            raise ValueError(f"num/channels/height/width need a blob of at most 4 axes, this one has shape "
                             f"{self.shape}")
        return self.shape[index] if index < self._data.ndim else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self) -> str:
        return f"Blob(shape={self.shape})"


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
