"""`caffe.Net` over a netcompress Net: blobs and params as numpy arrays, forward/backward as Caffe runs them.

What a pycaffe script sees is Caffe's net, not netcompress's: the layer list has the Split layers that Caffe's
InsertSplits adds where a blob feeds several layers (`ip2_ip2_0_split`, tops `ip2_ip2_0_split_0`, ...), blobs are
in Caffe's creation order, outputs are the blobs nothing consumes (sorted), and the backward follows Caffe's
Net::Init analysis (a layer that contributes to no loss runs no backward unless the net has force_backward).

Memory follows Caffe's SyncedMemory. A blob's `.data`/`.diff` is a host array that stays the same object while
the shape does; the net's values are tensors on its device. Reading `.data` brings the newest values to the
host (on the CPU every forward copies them at once, so arrays held by a script see each forward, as Caffe's CPU
memory does; on a GPU they come over when read, as Caffe's mutable_cpu_data); what a script writes there goes to
the device before the net next uses it. Parameters (`net.params`) are numpy views of the parameter tensors on
the CPU, so net surgery writes the weights themselves; on a GPU they are host copies pushed back before every
forward, backward, solver step and save, and refreshed when the device's copy changed (a solver update).

Forward runs Caffe's layers in order from the blobs (an Input layer's tops are what the script wrote into its
blobs); backward runs each layer's backward from its tops' diffs, as Caffe's Layer::Backward: a bottom's diff is
overwritten, a parameter's diff accumulates until `clear_param_diffs` (or a solver step) clears it, and a
Split layer sums its tops' diffs. Each layer's backward is its autograd graph from the last forward; with no
forward since the net was built (or since a solver ran it), the layer's forward is recomputed from its bottoms
first (a Dropout then draws a new mask).
"""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..debuginfo import abs_mean, backward_params, forward_params, log_backward, log_forward
from ..errors import NetDefinitionError, WeightLoadError
from ..log import get_logger
from ..net import Net as CoreNet, reshaped_bottoms_error
from ..proto import caffe_pb2 as pb
from . import _base
from ._base import Blob, check_dims

log = get_logger("pycaffe")

__all__ = ["Net"]

# Parameters on the CPU are handed out as numpy views of their tensors; tests turn this off to run the
# host-copy path that other devices use.
_DIRECT_CPU_VIEWS = True


# ----------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------

class _Memory:
    """One of a blob's two arrays (data or diff): a host array and the net's tensor, with Caffe's head rule: the
    host array is refreshed from a newer tensor when read, and a host array handed to the script is uploaded
    before the net reads it."""

    __slots__ = ("host", "dev", "host_newer", "dev_newer", "fill", "handed_out")

    def __init__(self, shape: tuple[int, ...], fill: float = 0.0):
        self.fill = fill
        self.host = self._new(shape)
        self.dev: torch.Tensor | None = None
        self.host_newer = False
        self.dev_newer = False
        self.handed_out = False  # the script has had the host array (and may hold it)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dev.shape) if self.dev_newer else tuple(self.host.shape)

    def reset(self, shape: tuple[int, ...]) -> None:
        """A new shape (values reset to the fill value), the host array now the truth."""
        if tuple(self.host.shape) != tuple(shape):
            self.host = self._new(shape)
        self.dev = None
        self.dev_newer = False
        self.host_newer = True

    def _new(self, shape: tuple[int, ...]) -> np.ndarray:
        """An array of the fill value (zeros from calloc: memory is only taken where it is written, as Caffe's
        blobs allocate on first use)."""
        return np.zeros(shape, np.float32) if self.fill == 0 else np.full(shape, self.fill, np.float32)

    def set_dev(self, t: torch.Tensor) -> None:
        self.dev = t
        self.dev_newer = True
        self.host_newer = False

    def sync_down(self) -> None:
        """Copy a newer tensor into the host array (the same array while the shape is the same)."""
        if not self.dev_newer:
            return
        src = self.dev.detach()
        if tuple(src.shape) != tuple(self.host.shape):
            self.host = np.empty(tuple(src.shape), np.float32)
        if src.dtype == torch.bfloat16 or src.dtype == torch.float16:
            src = src.float()
        np.copyto(self.host, src.to("cpu").numpy(), casting="unsafe")
        self.dev_newer = False

    def to_host(self) -> np.ndarray:
        """The host array, up to date, which the caller may now write (Caffe's mutable_cpu_data)."""
        self.sync_down()
        self.host_newer = True
        self.handed_out = True
        return self.host

    def to_dev(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The values as a tensor on `device`, uploaded from the host array where that is newer."""
        if self.dev is None or self.host_newer:
            like = self.dev.dtype if self.dev is not None else dtype
            self.dev = torch.from_numpy(self.host.copy()).to(device=device, dtype=like)
            self.host_newer = False
            self.dev_newer = False
        return self.dev


class _NetBlob(Blob):
    """A blob of a net (see the module docstring). The tops of a Split layer share their bottom's data, as in
    Caffe; each has its own diff."""

    def __init__(self, net: "Net", name: str, core_name: str | None, shape: tuple[int, ...],
                 alias: "_NetBlob | None" = None, loss_weight: float = 0.0):
        self._net = net
        self.name = name
        self._core_name = core_name
        self._alias = alias
        self._mem = _Memory(shape)
        self._dmem = _Memory(shape, fill=loss_weight)
        self._seen: torch.Tensor | None = None  # the core tensor last taken as this blob's data

    # -- data ---------------------------------------------------------------------------------------------------
    def _pull(self) -> None:
        """Take the core net's newest tensor of this blob (a forward the solver ran) as the device value."""
        if self._core_name is None:
            return
        c = self._net._core.blobs.get(self._core_name)
        if c is not None and c is not self._seen:
            self._set_data(c)

    def _set_data(self, t: torch.Tensor) -> None:
        self._seen = t
        old = self._mem.shape
        self._mem.set_dev(t)
        if tuple(t.shape) != old:
            self._dmem.reset(tuple(t.shape))
            self._dmem.host_newer = False

    def _data_tensor(self) -> torch.Tensor:
        if self._alias is not None:
            return self._alias._data_tensor()
        self._pull()
        net = self._net
        return self._mem.to_dev(net._core.device, net._core.dtype)

    @property
    def data(self) -> np.ndarray:
        if self._alias is not None:
            return self._alias.data
        self._pull()
        return self._mem.to_host()

    @property
    def shape(self) -> tuple[int, ...]:
        if self._alias is not None:
            return self._alias.shape
        self._pull()
        return self._mem.shape

    # -- diff ---------------------------------------------------------------------------------------------------
    def _check_diff_shape(self) -> None:
        shape = self.shape
        if self._dmem.shape != shape:
            self._dmem.reset(shape)

    @property
    def diff(self) -> np.ndarray:
        self._check_diff_shape()
        return self._dmem.to_host()

    def _diff_tensor(self, like: torch.Tensor) -> torch.Tensor:
        self._check_diff_shape()
        t = self._dmem.to_dev(like.device, like.dtype)
        if t.dtype != like.dtype:
            t = t.to(like.dtype)
        return t

    def _set_diff(self, t: torch.Tensor) -> None:
        self._dmem.set_dev(t.detach())

    def _sync_down(self) -> None:
        self._mem.sync_down()
        self._dmem.sync_down()

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob.reshape: on a net's input blob, the next `net.reshape()` or forward reshapes the net."""
        dims = check_dims(shape)
        if self._alias is not None:
            raise ValueError(f"blob '{self.name}' is a Split layer's top: it shares its bottom's data and shape")
        self._pull()
        if dims != self._mem.shape:
            self._mem.reset(dims)
            self._dmem.reset(dims)


class _Mirror:
    """A host copy of a device tensor, coherent by the tensor's identity and version counter: refreshed when the
    tensor changed since the last sync, pushed back (if handed out) before the net uses the tensor."""

    __slots__ = ("host", "tag", "dirty")

    def __init__(self):
        self.host: np.ndarray | None = None
        self.tag: tuple[int, int] | None = None
        self.dirty = False

    def pull(self, t: torch.Tensor) -> np.ndarray:
        tag = (id(t), t._version)
        if self.host is None or tag != self.tag or self.host.shape != tuple(t.shape):
            src = t.detach().to("cpu")
            if self.host is None or self.host.shape != tuple(t.shape):
                self.host = np.empty(tuple(t.shape), np.float32)
            np.copyto(self.host, src.float().numpy() if src.dtype in (torch.bfloat16, torch.float16)
                      else src.numpy(), casting="unsafe")
            self.tag = tag
        self.dirty = True
        return self.host

    def push(self, t: torch.Tensor) -> None:
        if not self.dirty or self.host is None:
            return
        with torch.no_grad():
            # through .data: a script's write is not an autograd in-place operation (Caffe's memory has none)
            t.data.copy_(torch.from_numpy(self.host).reshape(t.shape))
        self.tag = (id(t), t._version)
        self.dirty = False


class _ParamBlob(Blob):
    """A parameter blob of a layer (`net.params[name][i]`, `net.layers[i].blobs[j]`). `diff` is the parameter's
    gradient (a mask or statistics blob, which no gradient reaches, keeps a zero diff of its own)."""

    def __init__(self, net: "Net", key: str, index: int):
        self._net = net
        self._key = key
        self._index = index
        self._dmirror = _Mirror()
        self._mirror = _Mirror()
        self._own_diff: np.ndarray | None = None

    def _tensor(self) -> torch.Tensor:
        layer = self._net._core.layers[self._key]
        return getattr(layer, layer.blob_names[self._index])

    @staticmethod
    def _direct(t: torch.Tensor) -> bool:
        return _DIRECT_CPU_VIEWS and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)

    @property
    def data(self) -> np.ndarray:
        t = self._tensor()
        if self._direct(t):
            return t.detach().numpy()
        self._net._mirrored.add(self)
        return self._mirror.pull(t)

    def _grad(self, t: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(t, nn.Parameter):
            return None
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        return t.grad

    @property
    def diff(self) -> np.ndarray:
        t = self._tensor()
        g = self._grad(t)
        if g is None:
            if self._own_diff is None or self._own_diff.shape != tuple(t.shape):
                self._own_diff = np.zeros(tuple(t.shape), np.float32)
            return self._own_diff
        if self._direct(g):
            return g.numpy()
        self._net._mirrored.add(self)
        return self._dmirror.pull(g)

    def _push(self) -> None:
        t = self._tensor()
        self._mirror.push(t)
        if isinstance(t, nn.Parameter) and self._dmirror.dirty:
            self._dmirror.push(self._grad(t))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor().shape)

    def reshape(self, *shape: int) -> None:
        dims = check_dims(shape)
        if dims != self.shape:
            raise NotImplementedError(f"reshaping a parameter blob ({self._net._core.layers[self._key].name} "
                                      f"blob {self._index}, {list(self.shape)} -> {list(dims)}): netcompress "
                                      "layers fix their parameter shapes at construction; build a net whose "
                                      "prototxt has the new shape and copy the values in")


class _LayerView:
    """What `net.layers[i]` gives for a built-in layer: its Caffe `type` and its parameter `blobs`."""

    def __init__(self, type_name: str, blobs: list[_ParamBlob]):
        self._type = type_name
        self.blobs = blobs

    @property
    def type(self) -> str:
        return self._type

    def __repr__(self) -> str:
        return f"<caffe layer of type {self._type}>"


# ----------------------------------------------------------------------------------------------------------------
# Caffe's view of the net: Split layers, blob order, backward needs
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _CLayer:
    name: str
    type: str
    key: str | None                # the core layer's key; None for a Split layer Caffe inserts
    bottoms: list[str]
    tops: list[str]
    core_tops: list[str | None]
    loss: list[float]


def _caffe_layers(core: CoreNet) -> list[_CLayer]:
    """The net's layers as Caffe's Net holds them after InsertSplits (the core net's Split plan): a Split
    layer after each top that several bottoms (or a bottom and an explicit loss_weight) use, those bottoms
    renamed."""
    params = list(core.param.layer)
    if len(params) != len(core._keys):
        raise NetDefinitionError(f"net '{core.name}': {len(params)} layers in its parameter, {len(core._keys)} built")
    plan = core._splits  # the core net's InsertSplits plan (netcompress.graph.plan_splits)
    out: list[_CLayer] = []
    for i, lp in enumerate(params):
        key = core._keys[i]
        layer = core.layers[key]
        core_tops = list(core._tops[i])
        tops = [t if j < len(lp.top) else "(automatic)" for j, t in enumerate(core_tops)]
        given = [] if plan.cleared[i] else [float(w) for w in lp.loss_weight]
        if not given and layer.is_loss:
            given = [1.0]  # LossLayer::LayerSetUp's default (also after InsertSplits cleared the weights)
        loss = [given[j] if j < len(given) else 0.0 for j in range(len(tops))]
        out.append(_CLayer(name=lp.name, type=lp.type, key=key, bottoms=plan.bottoms[i], tops=tops,
                           core_tops=core_tops, loss=loss))
        for sp in plan.splits[i]:
            n = len(sp.tops)
            out.append(_CLayer(name=sp.name, type="Split", key=None, bottoms=[sp.bottom], tops=list(sp.tops),
                               core_tops=[None] * n, loss=sp.top_loss()))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Net
# ----------------------------------------------------------------------------------------------------------------

def _phase(phase) -> int:
    if isinstance(phase, str) and phase.lower() in ("train", "test"):
        return pb.TRAIN if phase.lower() == "train" else pb.TEST
    if isinstance(phase, bool) or not isinstance(phase, (int, np.integer)) or int(phase) not in (pb.TRAIN, pb.TEST):
        raise ValueError(f"phase must be caffe.TRAIN ({pb.TRAIN}) or caffe.TEST ({pb.TEST}), got {phase!r}")
    return int(phase)


def _check_file(path) -> str:
    path = os.fsdecode(os.fspath(path))  # (a bytes path as a str, as every reader takes it)
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not open file {path}")
    return path


class Net:
    """pycaffe's `caffe.Net`: `Net(network_file, phase, level=0, stages=None, weights=None)`, or the legacy
    `Net(network_file, weights_file, phase)`. `network_file` may also be a NetParameter."""

    def __init__(self, network_file, *args, phase=None, level: int = 0, stages: Sequence[str] | None = None,
                 weights=None, _core: CoreNet | None = None, _owner: Any = None):
        self._owner = _owner  # the Solver whose net this is (its structure is the solver's)
        self._callbacks: dict[str, list[Callable[[int], Any]]] = {
            "before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        self._mirrored: set[_ParamBlob] = set()
        if _core is None:
            if len(args) == 2:  # the legacy Net(file, weights, phase)
                if phase is not None or weights is not None:
                    raise TypeError("Net(network_file, weights_file, phase) takes no phase= or weights= as well")
                weights, phase = args
                log.warning("DEPRECATION WARNING - deprecated use of Python interface; use "
                            "Net('%s', %s, weights='%s')", network_file, phase, weights)
            elif len(args) == 1:
                if phase is not None:
                    raise TypeError("Net() got the phase twice (positionally and as phase=)")
                phase = args[0]
            elif args:
                raise TypeError(f"Net(network_file, phase, ...) takes at most 3 positional arguments, got "
                                f"{1 + len(args)}")
            if phase is None:
                raise TypeError("Net() needs the phase: caffe.Net(network_file, caffe.TEST) or caffe.TRAIN")
            phase = _phase(phase)
            if not isinstance(network_file, pb.NetParameter):
                network_file = _check_file(network_file)
            if weights is not None:
                weights = _check_file(weights)
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
                raise TypeError(f"Net(level=...) takes an integer, got {level!r}")
            if not -2**31 <= level < 2**31:
                raise ValueError(f"Net(level=...) takes a 32-bit integer (Caffe's NetState.level), got {level}")
            if stages is None:
                stages = ()
            if isinstance(stages, (str, bytes)) or not all(isinstance(s, str) for s in stages):
                raise TypeError(f"Net(stages=...) takes a list of stage names, got {stages!r}")
            seed, rng = _base.net_rng()
            _core = CoreNet(network_file, phase=phase, level=int(level), stages=[str(s) for s in stages],
                            device=_base.device(), dtype=torch.float32, seed=seed, rng=rng)
            self._core = _core
            self._build_view()
            if weights is not None:
                self.copy_from(weights)
        else:
            self._core = _core
            self._build_view()

    # -- structure ----------------------------------------------------------------------------------------------
    def _build_view(self, old: "dict[str, _NetBlob] | None" = None) -> None:
        core = self._core
        self._train = core.phase == pb.TRAIN
        self._cl = _caffe_layers(core)
        self._io: dict[int, tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] = {}
        self._runner_blobs: dict[str, torch.Tensor] = {}
        names: list[str] = []
        blobs: list[_NetBlob] = []
        by_name: dict[str, _NetBlob] = {}
        index: dict[str, int] = {}
        self._tids: list[list[int]] = []
        self._bids: list[list[int]] = []
        inputs: list[int] = []
        available: dict[str, int] = {}
        old = old or {}
        for cl in self._cl:
            bids = []
            for b in cl.bottoms:
                if b not in by_name:
                    raise NetDefinitionError(f"net '{core.name}': layer '{cl.name}' reads '{b}', which Caffe's net "
                                             "does not have")
                bids.append(index[b])
                available.pop(b, None)
            tids = []
            for j, t in enumerate(cl.tops):
                in_place = j < len(cl.bottoms) and cl.bottoms[j] == t
                if in_place:
                    tids.append(bids[j])
                    continue
                if t in by_name and t != "(automatic)":
                    raise NetDefinitionError(
                        f"net '{core.name}': Caffe refuses this net: Top blob '{t}' produced by multiple sources "
                        f"(layer '{cl.name}' writes in place a blob that another layer also reads before it; Caffe "
                        "then renames that bottom to a Split layer's top)")
                if cl.key is None:
                    src = by_name[cl.bottoms[0]]
                    blob = _NetBlob(self, t, None, (), alias=src, loss_weight=cl.loss[j])
                else:
                    cname = cl.core_tops[j]
                    shape = tuple(core.blob_shapes.get(cname, ()))
                    blob = old.get(t) if t != "(automatic)" else None
                    if blob is None or blob._alias is not None:
                        blob = _NetBlob(self, t, cname, shape, loss_weight=cl.loss[j])
                    else:
                        blob._core_name, blob._seen = cname, None
                        if blob._mem.shape != shape and not self._is_input_top(cl):
                            blob._mem.reset(shape)
                            blob._mem.host_newer = False
                        blob._dmem.fill = cl.loss[j]
                tids.append(len(blobs))
                names.append(t)
                blobs.append(blob)
                if t != "(automatic)":
                    by_name[t] = blob
                    index[t] = len(blobs) - 1
                    available[t] = len(blobs) - 1
                if cl.key is not None and core.layers[cl.key].is_input:
                    inputs.append(len(blobs) - 1)
            self._bids.append(bids)
            self._tids.append(tids)
        self._blob_names = names
        self._blob_list = blobs
        self._inputs = inputs
        self._outputs = [available[n] for n in sorted(available)]
        weights = [0.0] * len(blobs)
        for cl, tids in zip(self._cl, self._tids):
            for j, b in enumerate(tids):
                weights[b] = cl.loss[j]
        self._blob_loss_weights = weights
        # Net::Init's backward analysis: the core net's, over the same layers in the same order
        self._layer_need, self._bottom_need = self._core.backward.layer, self._core.backward.bottom
        self._blobs_dict = OrderedDict(zip(names, blobs))
        self._params_dict = None
        self._layers_list = None

    def _is_input_top(self, cl: _CLayer) -> bool:
        return cl.key is not None and self._core.layers[cl.key].is_input

    # -- pycaffe's properties -----------------------------------------------------------------------------------
    @property
    def blobs(self) -> "OrderedDict[str, Blob]":
        """Blob name -> Blob, in Caffe's order (inputs first, Split tops included)."""
        return self._blobs_dict

    @property
    def params(self) -> "OrderedDict[str, list[Blob]]":
        """Layer name -> its parameter blobs, for the layers that have blobs."""
        if self._params_dict is None:
            d: "OrderedDict[str, list[Blob]]" = OrderedDict()
            for cl, layer in zip(self._cl, self.layers):
                blobs = layer.blobs if isinstance(layer, _LayerView) else self._param_blobs(cl)
                if len(blobs) > 0:
                    d[cl.name] = blobs
            self._params_dict = d
        return self._params_dict

    def _param_blobs(self, cl: _CLayer) -> list[_ParamBlob]:
        if cl.key is None:
            return []
        cache = self.__dict__.setdefault("_pblobs", {})
        if cl.key not in cache:
            layer = self._core.layers[cl.key]
            cache[cl.key] = [_ParamBlob(self, cl.key, j) for j in range(len(layer.blob_names))]
        return cache[cl.key]

    @property
    def layers(self) -> list:
        """The layers in Caffe's order; a Python layer is the user's own layer object, as in pycaffe."""
        if self._layers_list is None:
            out = []
            for cl in self._cl:
                layer = None if cl.key is None else self._core.layers[cl.key]
                if layer is not None and cl.type == "Python" and hasattr(layer, "impl"):
                    out.append(layer.impl)
                else:
                    out.append(_LayerView(cl.type, self._param_blobs(cl)))
            self._layers_list = out
        return self._layers_list

    @property
    def layer_dict(self) -> "OrderedDict[str, Any]":
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return [cl.name for cl in self._cl]

    @property
    def _blobs(self) -> list[Blob]:
        return list(self._blob_list)

    @property
    def inputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._inputs]

    @property
    def outputs(self) -> list[str]:
        return [self._blob_names[i] for i in self._outputs]

    @property
    def blob_loss_weights(self) -> "OrderedDict[str, float]":
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((cl.name, [self._blob_names[t] for t in ids]) for cl, ids in zip(self._cl, self._tids))

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((cl.name, [self._blob_names[b] for b in ids])
                           for cl, ids in zip(self._cl, self._bids))

    def _top_ids(self, i: int) -> list[int]:
        return list(self._tids[i])

    def _bottom_ids(self, i: int) -> list[int]:
        return list(self._bids[i])

    @property
    def phase(self) -> int:
        return self._core.phase

    @property
    def netcompress_net(self) -> CoreNet:
        """The netcompress Net underneath (torch modules keyed by layer name)."""
        return self._core

    def __repr__(self) -> str:
        return f"<caffe.Net '{self._core.name}' ({'TRAIN' if self._train else 'TEST'}, {len(self._cl)} layers)>"

    # -- coherence ----------------------------------------------------------------------------------------------
    def _flush(self) -> None:
        """Before the net is used: a reshaped input reshapes the net; host writes reach the device (parameters
        handed out on a GPU, the persistent tops of DummyData constant fillers)."""
        self._maybe_reshape()
        for pblob in list(self._mirrored):
            pblob._push()
        core = self._core
        for _, layer in core.named_layers():
            layer.sync_host_writes()
        for cl, tids in zip(self._cl, self._tids):
            if cl.key is None:
                continue
            layer = core.layers[cl.key]
            constants = getattr(layer, "_constant", None) if layer.type_name == "DummyData" else None
            if not constants:
                continue
            for j, t in enumerate(tids):
                blob = self._blob_list[t]
                c = constants[j] if j < len(constants) else None
                if c is not None and blob._mem.host_newer and blob._mem.shape == tuple(c.shape):
                    # Caffe's DummyData fills a constant top once: what a script writes there stays
                    c.copy_(torch.from_numpy(blob._mem.host).to(c.device, c.dtype))
                    blob._mem.host_newer = False

    def _feed_inputs(self) -> None:
        """The input blobs' values as the core net's persistent inputs (for a forward the solver runs)."""
        fed = {self._blob_list[i]._core_name: self._blob_list[i]._data_tensor() for i in self._inputs}
        if fed:
            self._core.set_input(**fed)

    def _after_core_run(self) -> None:
        """After the core net ran (a solver step, a test): take its tensors; on the CPU copy them into the host
        arrays the script has had, which it may hold (in CPU Caffe such an array is the blob's memory, so it
        shows each step's values). The others are copied when the script asks for them."""
        cpu = self._core.device.type == "cpu"
        for blob in self._blob_list:
            if blob._alias is None:
                blob._pull()
                if cpu and blob._mem.handed_out:
                    blob._mem.sync_down()

    # -- reshape ------------------------------------------------------------------------------------------------
    def _maybe_reshape(self) -> None:
        core = self._core
        want = {}
        for i in self._inputs:
            blob = self._blob_list[i]
            shape = blob.shape
            if shape != tuple(core.blob_shapes[blob._core_name]):
                want[blob._core_name] = shape
        if not want:
            return
        if self._owner is not None:
            raise NotImplementedError(
                f"reshaping the input of a solver's net ({', '.join(f'{k} to {list(v)}' for k, v in want.items())}): "
                "netcompress builds a solver's nets once; change input_param's shape in the prototxt instead")
        param = pb.NetParameter()
        param.CopyFrom(core.param)
        shapes = {n: tuple(core.blob_shapes[n]) for n in core.input_names}
        shapes.update(want)
        for lp in param.layer:
            if lp.type == "Input":
                del lp.input_param.shape[:]
                for t in lp.top:
                    lp.input_param.shape.add().dim.extend(shapes[t])
        new = CoreNet(param, state=core.state, device=core.device, dtype=core.dtype, verbose=False,
                      source=core.source, seed=core.ctx.seed, options=core.ctx.options)
        new.share_weights_with(core)
        new.load_extra_state(core.extra_state())
        for name in core.input_names:
            if name in core._fed and tuple(core._fed[name].shape) == shapes[name]:
                new.set_input(**{name: core._fed[name]})
        old = {b.name: b for b in self._blob_list if b._alias is None and b.name != "(automatic)"}
        self._core = new
        self._build_view(old)

    def reshape(self) -> None:
        """Caffe's Net::Reshape: the shapes follow the input blobs (`net.blobs['data'].reshape(...)` first).

        netcompress layers fix their shapes when built, so a new input shape builds the net again with that
        input shape, sharing this net's parameter tensors (held arrays stay valid) and layer state; a Python
        layer is then constructed and set up again (Caffe would only call its reshape)."""
        self._maybe_reshape()

    # -- forward / backward -------------------------------------------------------------------------------------
    def _layer_index(self, name: str) -> int:
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise ValueError(f"'{name}' is not a layer of net '{self._core.name}' (layers: "
                             f"{', '.join(self._layer_names)})") from None

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs) -> dict[str, np.ndarray]:
        """pycaffe's Net.forward: set the inputs given as keyword arrays (their names must be the net's inputs
        and their first axis its batch size), run the layers from `start` to `end` (inclusive; default all), and
        return {blob name: its data array} for the outputs (or `end`'s tops) and the extra `blobs`. The arrays
        are the blobs' own: the next forward overwrites them."""
        blobs = self._check_blob_names(blobs, "forward(blobs=...)")
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self._cl) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise ValueError(f"Input blob arguments do not match net inputs: got {sorted(kwargs)}, the net's "
                                 f"inputs are {self.inputs}")
            for name, value in kwargs.items():
                self._fill(name, value, "data", "Input")
        self._forward(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def _check_blob_names(self, names, who: str) -> list[str]:
        """`names` as a list of this net's blob names (checked before the net runs, not after)."""
        if isinstance(names, (str, bytes)):
            raise TypeError(f"{who} takes a list of blob names, got the string {names!r} (write [{names!r}])")
        names = list(names or [])
        for n in names:
            if n not in self._blobs_dict:
                raise KeyError(f"{who}: {n!r} is not a blob of net '{self._core.name}'")
        return names

    def _fill(self, name: str, value, field: str, what: str) -> None:
        """Blob `name`'s data or diff := `value` (numpy-broadcast within the sample, as pycaffe assigns it), after
        pycaffe's check that its first axis is the batch; a blob of no axes (a loss) takes a single value."""
        value = _base.real_array(value, f"{what} '{name}'")
        shape = self.blobs[name].shape
        if (value.size != 1) if not shape else (value.ndim == 0 or value.shape[0] != shape[0]):
            raise ValueError(f"{what} is not batch sized: '{name}' has shape {list(value.shape)}, the blob "
                             f"{list(shape)}")
        try:
            getattr(self.blobs[name], field)[...] = value.reshape(()) if not shape else value
        except ValueError:
            raise ValueError(f"{what} '{name}' of shape {list(value.shape)} does not fit the blob's shape "
                             f"{list(shape)}") from None

    def _forward(self, start: int, end: int) -> float:
        """Caffe's ForwardFromTo(start, end): the layers start..end; returns their weighted loss."""
        if not (0 <= start and end < len(self._cl)):
            raise IndexError(f"forward from layer {start} to {end}: the net has layers 0 to {len(self._cl) - 1}")
        self._flush()
        core = self._core
        loss = 0.0
        for i in range(start, end + 1):
            for fn in self._callbacks["before_forward"]:
                fn(i)
            cl = self._cl[i]
            if cl.key is not None:
                outs = self._run_layer(i, hooks=True)
                for w, y in zip(cl.loss, outs):
                    if w:
                        loss += w * float(y.detach().double().sum())
            if core.debug_info:
                self._forward_debug_info(i)
            for fn in self._callbacks["after_forward"]:
                fn(i)
        self._runner_blobs = dict(core.blobs)
        if core.device.type == "cpu":
            for blob in self._blob_list:
                blob._mem.sync_down()
        return loss

    def _bottom_tensor(self, i: int, k: int) -> torch.Tensor:
        t = self._blob_list[self._bids[i][k]]._data_tensor().detach()
        if self._bottom_need[i][k] and t.is_floating_point():
            t.requires_grad_(True)
        return t

    def _run_layer(self, i: int, hooks: bool) -> tuple[torch.Tensor, ...]:
        cl = self._cl[i]
        core = self._core
        layer = core.layers[cl.key]
        if layer.is_input:
            xs = [self._blob_list[t]._data_tensor() for t in self._tids[i]]
        else:
            xs = [self._bottom_tensor(i, k) for k in range(len(cl.bottoms))]
        if hooks and self._train:
            layer.before_train_forward()  # the reference fork's state changes inside Layer::Forward
        need = self._layer_need[i]
        with torch.set_grad_enabled(need):
            try:
                out = layer(*xs)
            except (RuntimeError, IndexError, ValueError) as e:  # (the layer's own errors are NetcompressErrors)
                changed = None if isinstance(e, torch.cuda.OutOfMemoryError) else \
                    reshaped_bottoms_error(layer, cl.bottoms, xs, e)
                if changed is None:
                    raise
                raise changed from e  # (a Python layer above reshaped its top in forward, as Caffe allows)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if need:
            self._io[i] = (xs, outs)
        else:
            self._io.pop(i, None)
        for j, (t, y) in enumerate(zip(self._tids[i], outs)):
            self._blob_list[t]._set_data(y)
            cname = cl.core_tops[j]
            if cname is not None:
                core.blobs[cname] = y
        return outs

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs) -> dict[str, np.ndarray]:
        """pycaffe's Net.backward: set the output diffs given as keyword arrays (names must be the net's
        outputs), run the layers' backward from `start` down to `end` (default all), and return {blob name: its
        diff array} for the inputs (or `end`'s bottoms) and the extra `diffs`."""
        diffs = self._check_blob_names(diffs, "backward(diffs=...)")
        start_ind = self._layer_index(start) if start is not None else len(self._cl) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise ValueError(f"Top diff arguments do not match net outputs: got {sorted(kwargs)}, the net's "
                                 f"outputs are {self.outputs}")
            for name, value in kwargs.items():
                self._fill(name, value, "diff", "Diff")
        self._backward(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def _backward(self, start: int, end: int) -> None:
        """Caffe's BackwardFromTo(start, end): each layer's backward, from start down to end."""
        if not (0 <= end and start < len(self._cl)):
            raise IndexError(f"backward from layer {start} to {end}: the net has layers 0 to {len(self._cl) - 1}")
        self._flush()
        core = self._core
        if any(core.blobs.get(k) is not v for k, v in self._runner_blobs.items()) or \
                len(core.blobs) != len(self._runner_blobs):
            self._io.clear()  # the core net ran since (a solver step): recompute from the blobs
        if self._train:
            core.before_backward()
        try:
            for i in range(start, end - 1, -1):
                for fn in self._callbacks["before_backward"]:
                    fn(i)
                if self._layer_need[i]:
                    if self._cl[i].key is None:
                        self._split_backward(i)
                    else:
                        self._layer_backward(i)
                    if core.debug_info:
                        self._backward_debug_info(i)
                for fn in self._callbacks["after_backward"]:
                    fn(i)
        finally:
            if self._train:
                core.after_backward()
        if core.device.type == "cpu":
            for blob in self._blob_list:
                blob._dmem.sync_down()

    def _forward_debug_info(self, i: int) -> None:
        """Net::ForwardDebugInfo (netcompress.debuginfo): layer i's tops and blobs."""
        cl = self._cl[i]
        tops = [(cl.tops[k], self._blob_list[t]._data_tensor()) for k, t in enumerate(self._tids[i])]
        log_forward(cl.name, tops, [] if cl.key is None else forward_params(self._core.layers[cl.key]))

    def _backward_debug_info(self, i: int) -> None:
        """Net::BackwardDebugInfo: layer i's bottoms that get a diff, and its blobs with param_propagate_down."""
        cl = self._cl[i]
        bottoms = [(cl.bottoms[k], abs_mean(self._blob_list[b]._diff_tensor(self._blob_list[b]._data_tensor())))
                   for k, b in enumerate(self._bids[i]) if self._bottom_need[i][k]]
        params = [] if cl.key is None else backward_params(self._core.layers[cl.key], self._core.param.force_backward)
        log_backward(cl.name, bottoms, params)

    def _split_backward(self, i: int) -> None:
        if not self._bottom_need[i][0]:
            return
        src = self._blob_list[self._bids[i][0]]
        like = src._data_tensor()
        total = None
        for t in self._tids[i]:
            d = self._blob_list[t]._diff_tensor(like)
            total = d.clone() if total is None else total + d
        src._set_diff(total)

    def _layer_backward(self, i: int) -> None:
        rec = self._io.get(i)
        if rec is None:
            self._run_layer(i, hooks=False)
            rec = self._io.get(i)
            if rec is None:
                return
        xs, outs = rec
        layer = self._core.layers[self._cl[i].key]
        pairs = [(y, self._blob_list[t]._diff_tensor(y)) for t, y in zip(self._tids[i], outs)
                 if isinstance(y, torch.Tensor) and y.requires_grad]
        if not pairs:
            return
        ins = [] if layer.is_input else [(k, x) for k, x in enumerate(xs) if x.requires_grad]
        params = []
        for p in layer.blobs():
            if isinstance(p, nn.Parameter) and p.requires_grad and not any(p is q for q in params):
                params.append(p)
        targets = [x for _, x in ins] + params
        if not targets:
            return
        grads = torch.autograd.grad([y for y, _ in pairs], targets, [d for _, d in pairs], retain_graph=True,
                                    allow_unused=True)
        for (k, x), g in zip(ins, grads):
            self._blob_list[self._bids[i][k]]._set_diff(g if g is not None else torch.zeros_like(x))
        with torch.no_grad():
            for p, g in zip(params, grads[len(ins):]):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g)  # Caffe's parameter diffs accumulate until ClearParamDiffs

    def clear_param_diffs(self) -> None:
        """Zero every parameter's diff (Caffe's ClearParamDiffs), in place."""
        for pblob in list(self._mirrored):
            pblob._push()
        with torch.no_grad():
            for p in self._core.parameters():
                if p.grad is not None:
                    p.grad.zero_()
        for blobs in self.params.values():
            for b in blobs:
                if isinstance(b, _ParamBlob):
                    if b._own_diff is not None:
                        b._own_diff[...] = 0
                    b._dmirror.dirty = False
                    b._dmirror.tag = None

    def _batches(self, arrays: dict[str, np.ndarray]):
        """Slices of the arrays as long as the net's batch (the first axis of its first blob); the last slice
        is padded with zeros to a full batch, as pycaffe pads it."""
        n = self._sample_count(arrays)
        size = next(iter(self.blobs.values())).shape[0]
        for lo in range(0, n, size):
            batch = {}
            for name, arr in arrays.items():
                part = np.asarray(arr[lo:lo + size])
                if len(part) < size:
                    part = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:])])
                batch[name] = part
            yield batch

    @staticmethod
    def _sample_count(arrays: dict[str, np.ndarray]) -> int:
        """The arrays' common length (first axis), or a ValueError naming the array that has none or another."""
        lengths = {}
        for name, arr in arrays.items():
            shape = np.shape(arr)
            if not shape:
                raise ValueError(f"'{name}' is a scalar: each array holds one entry per sample along its first axis")
            lengths[name] = shape[0]
        if len(set(lengths.values())) > 1:
            raise ValueError("the arrays hold different numbers of samples (first axis): "
                             + ", ".join(f"'{k}' {v}" for k, v in lengths.items()))
        return next(iter(lengths.values()))

    @staticmethod
    def _stack(parts: dict[str, list[np.ndarray]], n: int) -> dict[str, np.ndarray]:
        """Each name's batches one after the other, less the padding (the entries' length beyond n); a blob of no
        axes (a loss) gives one value a batch."""
        out = {k: (np.stack(v) if v[0].ndim == 0 else np.concatenate(v)) if v else np.zeros((0,), np.float32)
               for k, v in parts.items()}
        scalar = {k for k, v in parts.items() if v and v[0].ndim == 0}
        sizes = [len(v) for k, v in out.items() if k not in scalar]
        pad = sizes[0] - n if sizes else 0
        return {k: v if k in scalar else v[:len(v) - pad] for k, v in out.items()} if pad > 0 else out

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs) -> dict[str, np.ndarray]:
        """Forward over arrays of any length in batches of the net's batch size; {output (and each of `blobs`):
        the batches' arrays stacked}, without the last batch's padding."""
        if not kwargs:
            raise ValueError("forward_all needs the input arrays as keyword arguments (name=array)")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in set(self.outputs + list(blobs or []))}
        for batch in self._batches(kwargs):
            for name, arr in self.forward(blobs=blobs, **batch).items():
                parts[name].append(arr.copy())
        return self._stack(parts, self._sample_count(kwargs))

    def forward_backward_all(self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None,
                             **kwargs) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Forward and backward in batches: the inputs and output diffs given as keyword arrays (where one kind
        runs out of batches, the net's own values are used); returns ({output: data}, {input: diff}), stacked,
        without the padding."""
        if not kwargs:
            raise ValueError("forward_backward_all needs input and/or output-diff arrays as keyword arguments")
        outs: dict[str, list[np.ndarray]] = {k: [] for k in set(self.outputs + list(blobs or []))}
        grads: dict[str, list[np.ndarray]] = {k: [] for k in set(self.inputs + list(diffs or []))}
        fwd = {k: kwargs[k] for k in self.inputs if k in kwargs}
        bwd = {k: kwargs[k] for k in self.outputs if k in kwargs}
        fb = list(self._batches(fwd)) if fwd else []
        bb = list(self._batches(bwd)) if bwd else []
        for n in range(max(len(fb), len(bb))):
            for name, arr in self.forward(blobs=blobs, **(fb[n] if n < len(fb) else {})).items():
                outs[name].append(arr.copy())
            for name, arr in self.backward(diffs=diffs, **(bb[n] if n < len(bb) else {})).items():
                grads[name].append(arr.copy())
        n = self._sample_count(kwargs)
        return self._stack(outs, n), self._stack(grads, n)

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Hand arrays to the MemoryData layer that must be the net's first layer (labels N or N x 1 x 1 x 1)."""
        if isinstance(labels, np.ndarray) and labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        first = self._cl[0] if self._cl else None
        layer = None if first is None or first.key is None else self._core.layers[first.key]
        if layer is None or layer.type_name != "MemoryData":
            raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        for name, arr, dims in (("data array", data, (layer.channels, layer.height, layer.width)),
                                ("labels array", labels, (1, 1, 1))):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
            if not arr.flags["C_CONTIGUOUS"]:
                raise RuntimeError(f"{name} must be C contiguous")
            if arr.ndim != 4:
                raise RuntimeError(f"{name} must be 4-d")
            if arr.dtype != np.float32:
                raise RuntimeError(f"{name} must be float32")
            for axis, what in zip((1, 2, 3), ("number of channels", "height", "width")):
                if arr.shape[axis] != dims[axis - 1]:
                    raise RuntimeError(f"{name} has wrong {what}")
        if data.shape[0] != labels.shape[0]:
            raise RuntimeError("data and labels must have the same first dimension")
        if data.shape[0] % layer.batch_size != 0:
            raise RuntimeError("first dimensions of input arrays must be a multiple of batch size")
        layer.set_input_arrays(data, labels)

    # -- weights ------------------------------------------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Copy weights by layer name from a .caffemodel or Caffe's HDF5 weights file (told apart by content)."""
        path = _check_file(path)
        self._flush()
        self._core.copy_from(path)

    def save(self, path) -> None:
        """Write the weights as a binary .caffemodel, as Caffe's Net::ToProto (Split layers included)."""
        from .. import io as ncio

        self._flush()
        ncio.write_caffemodel(os.fspath(path), self._core.to_proto())

    def save_hdf5(self, path) -> None:
        """Caffe's Net::ToHDF5: /data/<layer>/<i> datasets (float32), a parameter shared by name written once."""
        self._flush()
        self._core.save_hdf5(os.fspath(path))

    def load_hdf5(self, path) -> None:
        """Caffe's CopyTrainedLayersFromHDF5 (see `copy_from`)."""
        self.copy_from(path)

    def share_with(self, other: "Net") -> None:
        """Caffe's ShareTrainedLayersWith: each of `other`'s layers shares its blobs' data (not their diffs)
        with the first layer of its name here."""
        if not isinstance(other, (Net, CoreNet)):
            raise TypeError(f"share_with takes a caffe.Net, got {type(other).__name__}")
        src = other._core if isinstance(other, Net) else other
        self._flush()
        if isinstance(other, Net):
            other._flush()
        core = self._core
        for name, layer in src.named_layers():
            if not core.has_layer(name):
                log.info("Ignoring source layer %s", name)
                continue
            target = core.layers[core._first_key[name]]
            if len(target.blob_names) != len(layer.blob_names):
                raise WeightLoadError(f"Incompatible number of blobs for layer {name}")
            for j, (bd, bs) in enumerate(zip(target.blob_names, layer.blob_names)):
                s, d = getattr(layer, bs), getattr(target, bd)
                if tuple(s.shape) != tuple(d.shape):
                    raise WeightLoadError(f"Cannot share param {j} weights from layer '{name}'; shape mismatch.  "
                                          f"Source param shape is {list(s.shape)}; target param shape is "
                                          f"{list(d.shape)}")
                if isinstance(d, nn.Parameter):
                    # the same storage, a gradient of its own
                    target._parameters[bd] = nn.Parameter(s.detach(), requires_grad=d.requires_grad)
                else:
                    target._buffers[bd] = s
        core.learnable_params()  # re-reads the shared tensors

    # -- callbacks ----------------------------------------------------------------------------------------------
    def before_forward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["before_forward"].append(fn)

    def after_forward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["after_forward"].append(fn)

    def before_backward(self, fn: Callable[[int], Any]) -> None:
        self._callbacks["before_backward"].append(fn)

    def after_backward(self, fn: Callable[[int], Any]) -> None:
        """`fn(layer index)` after each layer's backward; or `after_backward(nccl)` (python/train.py with
        layer_wise_reduce): that NCCL averages this solver net's gradients, all of them before the update."""
        from .solver import NCCL

        if isinstance(fn, NCCL):
            if self._owner is None:
                raise ValueError("net.after_backward(nccl) applies to a solver's net (solver.net)")
            fn.attach(self._owner)
            return
        self._callbacks["after_backward"].append(fn)

