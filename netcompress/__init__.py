"""netcompress: Caffe-era nets, solvers and compression recipes (DNS, INQ) on PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

from .proto import caffe_pb2  # noqa: F401
from .errors import NetcompressError  # noqa: F401

__all__ = ["caffe_pb2", "NetcompressError", "__version__"]
