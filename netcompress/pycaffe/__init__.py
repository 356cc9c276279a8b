"""pycaffe on netcompress: `import netcompress.pycaffe as caffe` runs Caffe-era Python scripts unchanged.

What is here, with pycaffe's names and behaviour (BVLC Caffe's python/caffe):

- `caffe.Net(prototxt, caffe.TEST)`, `caffe.Net(prototxt, caffe.TEST, weights=...)` (and `level=`, `stages=`),
  the legacy `caffe.Net(prototxt, weights, phase)`: `blobs`, `params`, `layers`, `layer_dict`, `inputs`,
  `outputs`, `blob_loss_weights`, `top_names`, `bottom_names`, `forward`, `backward`, `forward_all`,
  `forward_backward_all`, `reshape`, `copy_from`, `save`, `save_hdf5`, `load_hdf5`, `share_with`,
  `clear_param_diffs`, `set_input_arrays` (MemoryData), and the before/after forward/backward callbacks
  (`netcompress.pycaffe.net` says how the numpy arrays stay coherent with the net's tensors);
- `caffe.SGDSolver`, `NesterovSolver`, `AdaGradSolver`, `RMSPropSolver`, `AdaDeltaSolver`, `AdamSolver`,
  `caffe.get_solver` (`netcompress.pycaffe.solver`);
- `caffe.NetSpec`, `caffe.layers`, `caffe.params`, `caffe.to_proto` (net_spec: nets written in Python,
  `netcompress.pycaffe.net_spec`) and `caffe.coord_map` (`crop`, as FCN's net definitions use it);
- `caffe.io` (Transformer, load_image with Pillow, resize_image, oversample, BlobProto and Datum conversions),
  `caffe.Classifier`, `caffe.Detector` (R-CNN's windowed detection), `caffe.proto.caffe_pb2`,
  `caffe.TRAIN` / `caffe.TEST`, `caffe.Layer` for Python layers;
- `set_mode_cpu`, `set_mode_gpu`, `set_device` (the device of nets and solvers created afterwards),
  `set_random_seed`, `init_log`, `log`, `layer_type_list`, `Timer`;
- multi-process training as BVLC's python/train.py does it: `set_solver_count`, `set_solver_rank`,
  `set_multiprocess`, `caffe.NCCL(solver, uid)` with `NCCL.new_uid()`, `bcast()`, `solver.add_callback(nccl)` and
  `net.after_backward(nccl)` (`netcompress.pycaffe.solver`; over torch.distributed, NCCL between GPUs and gloo
  between CPU processes).

Not here: `Detector.detect_selective_search` needs Caffe's external selective-search module.
`caffe.draw` draws nets through pydot (`netcompress.tools.draw`).

A Caffe *Python layer* module that does `import caffe` gets this package where no other `caffe` is imported
(`install_as_caffe`, used by layers/python.py), `caffe.io` and `caffe.proto` included.
"""
from __future__ import annotations

import logging
import sys
import time
from types import ModuleType

from .. import proto
from ..proto import caffe_pb2
from . import io
from ._base import (TEST, TRAIN, Blob, BlobVec, Layer, set_device, set_mode_cpu, set_mode_gpu, set_multiprocess,
                    set_random_seed, set_solver_count, set_solver_rank, solver_count, solver_rank)
from .classifier import Classifier
from .detector import Detector
from .net import Net
from .net_spec import NetSpec, layers, params, to_proto
from .solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NCCL, NesterovSolver, RMSPropSolver, SGDSolver,
                     Solver, get_solver)

__all__ = ["Net", "Blob", "BlobVec", "Layer", "TRAIN", "TEST", "Solver", "SGDSolver", "NesterovSolver",
           "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "get_solver", "NCCL", "Timer",
           "Classifier", "Detector", "io", "proto", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "init_log", "log", "layer_type_list", "solver_count", "set_solver_count", "solver_rank",
           "set_solver_rank", "set_multiprocess", "has_nccl", "install_as_caffe", "NetSpec", "layers", "params",
           "to_proto"]

__version__ = "1.0.0"  # the BVLC Caffe release whose Python interface this follows

_log = logging.getLogger("netcompress.pycaffe")


def init_log(level: int = 0, stderr: bool = False) -> None:
    """glog's set-up: messages of glog `level` and above (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) go to stderr."""
    from ..log import setup_logging

    setup_logging({0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}.get(int(level), logging.CRITICAL))


def log(message: str) -> None:
    """An INFO line in Caffe's log."""
    _log.info("%s", message)


def layer_type_list() -> list[str]:
    """The layer types that nets may use (Caffe's LayerRegistry), sorted."""
    from ..layers.base import known_layer_types

    return known_layer_types()


def has_nccl() -> bool:
    """True: `caffe.NCCL` averages the gradients of solvers in separate processes (torch.distributed: NCCL
    between GPUs, gloo between CPU processes)."""
    return True


class Timer:
    """Caffe's Timer: `start()`, `stop()`, `ms` (the last start-to-stop time, or up to now while running)."""

    def __init__(self):
        self._start: float | None = None
        self._elapsed = 0.0
        self._running = False

    def start(self) -> None:
        self._start = time.perf_counter()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._elapsed = time.perf_counter() - self._start
            self._running = False

    @property
    def ms(self) -> float:
        if self._running:
            return (time.perf_counter() - self._start) * 1e3
        return self._elapsed * 1e3


def __getattr__(name: str):
    if name in ("draw", "coord_map"):  # submodules scripts import themselves (`import caffe.draw`)
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_as_caffe(_replacing: ModuleType | None = None) -> bool:
    """Make this package importable as `caffe` (with `caffe.io`, `caffe.proto`, `caffe.proto.caffe_pb2`,
    `caffe.net_spec`, `caffe.draw`, `caffe.coord_map`, `caffe.classifier`, `caffe.detector`) where
    no module named `caffe` is imported yet; True if it was installed. (`_replacing`: the stand-in module of
    `pycaffe/importable`, which is `caffe` while it imports and gives way to this one.)"""
    if "caffe" in sys.modules and sys.modules["caffe"] is not _replacing:
        return False
    me: ModuleType = sys.modules[__name__]
    sys.modules["caffe"] = me
    sys.modules["caffe.io"] = io
    sys.modules["caffe.proto"] = proto
    sys.modules["caffe.proto.caffe_pb2"] = caffe_pb2
    sys.modules["caffe.net_spec"] = sys.modules[f"{__name__}.net_spec"]
    sys.modules["caffe.draw"] = __getattr__("draw")
    sys.modules["caffe.coord_map"] = __getattr__("coord_map")
    sys.modules["caffe.classifier"] = sys.modules[f"{__name__}.classifier"]
    sys.modules["caffe.detector"] = sys.modules[f"{__name__}.detector"]
    return True
