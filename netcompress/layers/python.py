"""Caffe's Python layer: a layer class written for pycaffe, named by `python_param { module layer param_str }`.

The class is looked up as Caffe does (the module imported from the Python path; netcompress also looks in the
current directory, where Caffe users' `PYTHONPATH=.` points) and constructed with the layer's LayerParameter;
`param_str` and `phase` are set, then `setup(bottom, top)` and `reshape(bottom, top)` run at set-up, and
`reshape` and `forward` at every forward, `backward(top, propagate_down, bottom)` at every backward, over
blobs holding numpy arrays (netcompress.pycaffe). Where no `caffe` module is imported, netcompress.pycaffe
stands in for it (`caffe`, `caffe.io`, `caffe.proto`), so `import caffe` / `class L(caffe.Layer)` work unchanged.

The tensors cross to numpy and back at each call (on a GPU through the host), as a pycaffe layer's
`blob.data` is host memory in Caffe too; the layer's own blobs (`self.blobs.add_blob`) are learnable
parameters of the net, saved in the caffemodel in their order, and trained from the diffs its backward writes.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    # numpy has no bfloat16; a pycaffe layer computes in float32 (Caffe's Dtype) or float64
    return np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)


def _import_layer_module(layer: Layer, module: str) -> Any:
    """The module `module`, imported with the current directory on the path and netcompress.pycaffe as
    `caffe` where no other `caffe` is imported (an installed pycaffe would need Caffe's C++ library)."""
    pycaffe = _pycaffe()
    pycaffe.install_as_caffe()
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        return importlib.import_module(module)
    except Exception as e:  # the user's module: any error at import is reported with the layer
        hint = ""
        if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("caffe"):
            hint = (" (netcompress.pycaffe stands in for caffe: it provides caffe.Net, the solvers, caffe.io, "
                    "caffe.proto, caffe.net_spec, caffe.draw, caffe.coord_map, caffe.Classifier, caffe.Detector and "
                    "caffe.Layer, not this module)")
        elif isinstance(e, ModuleNotFoundError) and e.name == module.split(".")[0]:
            hint = (f" (looked in the current directory {here} and on the Python path; put the module's folder "
                    f"in PYTHONPATH, as Caffe needs it too)")
        raise layer.error(f"python_param.module '{module}' cannot be imported: {type(e).__name__}: {e}{hint}") from e
    finally:
        if added:
            sys.path.remove(here)


def _pycaffe():
    """netcompress.pycaffe, imported when a Python layer is built: it sits above the net (caffe.Net, the solvers),
    so this module, below the net, does not import it at load time."""
    from .. import pycaffe

    return pycaffe


def _blob_from(t: torch.Tensor, blob) -> None:
    blob.reshape(*t.shape)
    t = t.detach().to("cpu", copy=False)
    if t.dtype not in (torch.float32, torch.float64, torch.float16):  # numpy has no bfloat16
        t = t.float()
    np.copyto(blob.data, t.numpy(), casting="unsafe")


class _ParamHostView:
    """A Python layer's `self.blobs[i].data`: the parameter's own memory where it is a CPU float32/float64 tensor
    (one memory, as Caffe's); else a host copy kept as Caffe's SyncedMemory keeps one: refreshed from the
    parameter when it changed there (a solver step, copy_from), and, as a read may be a write (Caffe's
    mutable_cpu_data), pushed back before the layer's next forward, a save or a pycaffe call (`push`)."""

    def __init__(self, layer: "PythonLayer", name: str):
        self.layer, self.name = layer, name
        self.host: np.ndarray | None = None
        self.seen: tuple[int, int] | None = None  # (id, version) of the parameter the copy was made from
        self.dirty = False

    def _param(self) -> torch.Tensor:
        return getattr(self.layer, self.name)

    def _state(self) -> tuple[int, int]:
        p = self._param()
        return id(p), p._version

    def __call__(self) -> np.ndarray:
        t = self._param().detach()
        if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
            return t.numpy()
        state = self._state()
        if self.host is None or state != self.seen or self.host.shape != tuple(t.shape):
            self.host = t.to("cpu", torch.float32).numpy().copy()
            self.seen = state
        self.dirty = True
        return self.host

    def push(self) -> None:
        if not self.dirty or self.host is None:
            return
        if self.seen == self._state():  # else the parameter changed since (copy_from, a step): its value wins
            p = self._param()
            with torch.no_grad():
                p.copy_(torch.from_numpy(self.host).to(p.device, p.dtype))
            self.seen = self._state()
        self.dirty = False


_DUAL_TYPES: dict[tuple[type, type], type | None] = {}


def _also_of_type(err: Exception, cause: Exception) -> Exception:
    """`err` as an instance of a class deriving from both its type and `cause`'s (built once per pair), or `err`
    itself where Python refuses the combination (incompatible layouts, an __init__ that takes other arguments)."""
    key = (type(err), type(cause))
    if issubclass(key[0], key[1]):
        return err
    if key not in _DUAL_TYPES:
        try:
            _DUAL_TYPES[key] = type(key[0].__name__, key, {"__module__": key[0].__module__})
        except TypeError:
            _DUAL_TYPES[key] = None
    cls = _DUAL_TYPES[key]
    if cls is None:
        return err
    try:
        dual = cls(*err.args)
    except Exception:  # the cause's class takes other arguments
        return err
    if str(dual) != str(err):  # a __str__ of the cause's class (KeyError quotes its message)
        return err
    return dual


@register_layer("Python")
class PythonLayer(Layer):
    """A pycaffe layer class (module and class from `python_param`) run inside the net."""

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        pp = param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both module and layer (the module to import and the class in it)")
        # share_in_parallel (one layer object for Caffe's GPU solver threads) needs nothing here: every process
        # of a distributed run builds its own nets and layers.
        pycaffe = _pycaffe()
        mod = _import_layer_module(self, pp.module)
        cls = getattr(mod, pp.layer, None)
        if not isinstance(cls, type):
            raise self.error(f"module '{pp.module}' ({getattr(mod, '__file__', '?')}) has no class '{pp.layer}'")
        self.impl_name = f"{pp.module}.{pp.layer}"
        self._dtype = _np_dtype(ctx.dtype)
        for attr in ("reshape", "forward", "backward"):
            if not callable(getattr(cls, attr, None)):
                raise self.error(f"class {self.impl_name} has no {attr}() method: a Python layer defines setup, "
                                 f"reshape, forward and backward (pycaffe's caffe.Layer)")
        self.impl = self._call("construction", lambda: cls(param))
        if not isinstance(getattr(self.impl, "blobs", None), list):
            self.impl.blobs = pycaffe.BlobVec()
        self.impl.param_str = pp.param_str
        self.impl.phase = int(ctx.phase)
        self._bottoms = [pycaffe.Blob(s, self._dtype) for s in self.bottom_shapes]
        self._tops = [pycaffe.Blob((), self._dtype) for _ in param.top]
        self._call("setup", lambda: self.impl.setup(self._bottoms, self._tops))
        self._call("reshape", lambda: self.impl.reshape(self._bottoms, self._tops))
        self._setup_top_shapes = [b.shape for b in self._tops]
        if not isinstance(getattr(self.impl, "blobs", None), list):
            raise self.error(f"{self.impl_name}.blobs is a {type(getattr(self.impl, 'blobs', None)).__name__} after "
                             "setup; a Python layer's blobs is the list caffe.Layer gives it (add to it with "
                             "self.blobs.add_blob(*shape))")
        for i, blob in enumerate(self.impl.blobs):
            if not isinstance(blob, pycaffe.Blob):
                raise self.error(f"{self.impl_name}.blobs[{i}] is a {type(blob).__name__}; add blobs with "
                                 f"self.blobs.add_blob(*shape)")
            self.add_blob(f"blob{i}", torch.from_numpy(np.array(blob.data, dtype=self._dtype)))
            # The layer's own view of the blob is the net's parameter, as in Caffe (one memory): what the net
            # loads (copy_from, share_with, a solver step) shows in `self.blobs[i].data` and what a script writes
            # there is the weight. On a GPU it is a host copy of the parameter at each read.
            blob._source = _ParamHostView(self, f"blob{i}")

    def sync_host_writes(self) -> None:
        """Push what was written into the host copies of parameters that live elsewhere (a GPU, a bfloat16
        net) to the parameters."""
        for blob in self.impl.blobs:
            if isinstance(getattr(blob, "_source", None), _ParamHostView):
                blob._source.push()

    def _call(self, what: str, fn):
        """fn(), an error in the layer's own code reported with the layer's name and class: a NetDefinitionError
        that is also of the error's own type where Python allows it (`except RuntimeError` around caffe.Net
        catches the RuntimeError a layer's setup raised, as in pycaffe)."""
        try:
            return fn()
        except Exception as e:
            raise _also_of_type(self.error(f"{self.impl_name} {what} raised {type(e).__name__}: {e}"), e) from e

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        if shapes == self.bottom_shapes:
            return list(self._setup_top_shapes)
        for blob, s in zip(self._bottoms, shapes):
            blob.reshape(*s)
        self._call("reshape", lambda: self.impl.reshape(self._bottoms, self._tops))
        return [b.shape for b in self._tops]

    def _check_blobs(self, what: str) -> None:
        """The layer's own blobs as set-up made them: as many, each of its parameter's shape (the net's parameter,
        its snapshot and the solver's history are of that shape; in Caffe a reshaped one overruns them)."""
        blobs = getattr(self.impl, "blobs", None)
        if not isinstance(blobs, list) or len(blobs) != len(self.blob_names):
            n = len(blobs) if isinstance(blobs, list) else type(blobs).__name__
            raise self.error(f"{self.impl_name} {what} left self.blobs with {n} blobs, set-up gave it "
                             f"{len(self.blob_names)}: a Python layer's learnable blobs are fixed at set-up")
        for i, (blob, name) in enumerate(zip(blobs, self.blob_names)):
            want = tuple(getattr(self, name).shape)
            if not isinstance(blob, _pycaffe().Blob):
                raise self.error(f"{self.impl_name} {what} replaced self.blobs[{i}] with a {type(blob).__name__}: a "
                                 "Python layer's learnable blobs are fixed at set-up")
            if tuple(blob.shape) != want:
                raise self.error(f"{self.impl_name} {what} reshaped self.blobs[{i}] from {list(want)} to "
                                 f"{list(blob.shape)}: a Python layer's learnable blobs keep the shape set-up gave "
                                 "them")

    def _params(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self.blob_names]

    def forward(self, *bottoms: torch.Tensor):
        self.sync_host_writes()
        tops = _PyCaffeLayer.apply(self, len(bottoms), *bottoms, *self._params())
        return tops[0] if len(tops) == 1 else tops

    def run_forward(self, bottoms: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Caffe's Forward of the pycaffe layer: reshape, then forward; the tops as tensors."""
        for t, blob in zip(bottoms, self._bottoms):
            _blob_from(t, blob)
        for p, blob in zip(params, self.impl.blobs):
            if getattr(blob, "_source", None) is None:  # (a parameter's view is the parameter already)
                _blob_from(p, blob)
        self._call("reshape", lambda: self.impl.reshape(self._bottoms, self._tops))
        self._call("forward", lambda: self.impl.forward(self._bottoms, self._tops))
        self._check_blobs("reshape/forward")
        like = bottoms[0] if bottoms else (params[0] if params else None)
        device = like.device if like is not None else self.ctx.device
        return [torch.from_numpy(np.array(b.data, dtype=self._dtype)).to(device=device, dtype=self.ctx.dtype)
                for b in self._tops]

    def run_backward(self, grads: Sequence[torch.Tensor | None], down: list[bool],
                     bottom_shapes: Sequence[Sequence[int]]) -> list[torch.Tensor | None]:
        """Caffe's Backward of the pycaffe layer: the bottoms' and blobs' diffs (zeroed first) from the tops'."""
        for g, blob in zip(grads, self._tops):
            if g is None:
                blob.diff[...] = 0
            else:
                np.copyto(blob.diff, g.detach().to("cpu").reshape(blob.shape).numpy(), casting="unsafe")
        for blob in list(self._bottoms) + list(self.impl.blobs):
            blob.diff[...] = 0
        self._call("backward", lambda: self.impl.backward(self._tops, list(down), self._bottoms))
        self._check_blobs("backward")
        for i, (blob, like) in enumerate(zip(self._bottoms, map(tuple, bottom_shapes))):
            if tuple(blob.shape) != like:
                raise self.error(f"{self.impl_name}: bottom[{i}] came in as {list(like)} and was reshaped to "
                                 f"{list(blob.shape)} by the time backward returned: its diff is the gradient of the "
                                 "bottom as it came in (a layer reshapes its tops, not its bottoms)")
        return [torch.from_numpy(np.array(b.diff, dtype=self._dtype)) for b in list(self._bottoms) + list(self.impl.blobs)]


class _PyCaffeLayer(torch.autograd.Function):
    """The pycaffe layer's forward and backward as one autograd node (bottoms and learnable blobs in, tops out)."""

    @staticmethod
    def forward(ctx, layer: PythonLayer, n_bottoms: int, *tensors: torch.Tensor):
        ctx.layer, ctx.n_bottoms = layer, n_bottoms
        ctx.like = [(t.device, t.dtype, t.shape) for t in tensors]
        tops = layer.run_forward(tensors[:n_bottoms], tensors[n_bottoms:])
        return tuple(tops)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        down = [bool(ctx.needs_input_grad[2 + i]) for i in range(ctx.n_bottoms)]
        diffs = ctx.layer.run_backward(grads, down, [shape for _, _, shape in ctx.like[:ctx.n_bottoms]])
        out: list[torch.Tensor | None] = [None, None]
        for i, (d, (device, dtype, shape)) in enumerate(zip(diffs, ctx.like)):
            out.append(d.to(device=device, dtype=dtype).reshape(shape) if ctx.needs_input_grad[2 + i] else None)
        return tuple(out)
