"""netcompress: Caffe-era nets, solvers and compression recipes (DNS, INQ) on PyTorch."""
from __future__ import annotations

__version__ = "0.1.0"

import sys as _sys

from .proto import caffe_pb2  # noqa: F401
from .errors import NetcompressError  # noqa: F401


class _TorchBeforeExtension:
    """Loads torch before the compiled extension `netcompress._C`, which links to torch's libraries (libc10, ...)
    without a path to them: `import netcompress._C` as a script's first import then works too. Finds nothing
    itself (the normal finders load the module)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == __name__ + "._C":
            __import__("torch")
        return None


if not any(isinstance(f, _TorchBeforeExtension) for f in _sys.meta_path):
    _sys.meta_path.insert(0, _TorchBeforeExtension())

__all__ = ["caffe_pb2", "NetcompressError", "__version__"]
