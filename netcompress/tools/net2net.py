"""Net2Net on Caffe models (recipes-spec 1.1, 1.2, 1.4, 5.5): function-preserving surgery between
training runs, its random baselines, and a small random mutation search.

- `net2wider`: more output units for a Convolution or InnerProduct layer L. New units copy units of
  L drawn with replacement; every consumer of L's output (followed through channel-wise layers)
  divides the copied inputs by their number of copies (1.1). `--init random-pad` is the baseline.
- `net2deeper`: an identity Convolution or InnerProduct after L (after its ReLU, which is copied),
  1.2. `--init random-init` draws the new layer from its fillers instead.
- `net2net_mutate`: one random mutation with the seed's operation weights (1.4).
- `net2net_search`: mutate -> fine-tune -> keep the best, with a readable log and a plot.

Every command reads a prototxt and its caffemodel and writes both atomically. The surgery edits
the caffemodel it was given (untouched layers keep their blobs and parameters as stored), and the
result is checked by building the new TEST-phase net and loading the new weights into it before
anything is written. Nets are built in the TEST phase, as the conversion scripts do, so Data
layers open their sources (relative to the current folder, as in Caffe).

Decisions (recipes-spec 5.6): PReLU slopes are replicated with their channels (Q1, the seed reset
them); no noise on the copied incoming weights unless `--incoming-noise` is given (Q2, the seed's
legacy conv->fc path used 0.05).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections import Counter
from typing import Callable, Sequence

import numpy as np
import torch

from .. import io as ncio
from ..cliargs import INT64_MAX, require_int_flag, seed_arg
from ..errors import NetcompressError
from ..layers.base import INT_MAX
from ..proto import caffe_pb2 as pb
from ._common import ToolError, net_error_text, refuse_overwrites, require_files, run_main, run_tool

__all__ = ["NetModel", "load_model", "widen", "deepen", "mutate", "training_log", "quiet_console", "net2wider", "net2deeper",
           "net2net_mutate", "net2net_search", "count_params", "MUTATION_OPS",
           "net2wider_main", "net2deeper_main", "net2net_mutate_main", "net2net_search_main"]

# Element-wise layers without parameters: a copied channel stays a copy through them.
ELEMENTWISE = frozenset({"ReLU", "Dropout", "Sigmoid", "TanH", "AbsVal", "Power", "Exp", "Log", "BNLL",
                         "ELU", "Threshold"})
# What net2deeper may not put an identity layer behind (only a plain ReLU is idempotent).
ACTIVATIONS = (ELEMENTWISE - {"Dropout"}) | {"PReLU"}
LOSS_LIKE = frozenset({"SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "MultinomialLogisticLoss",
                       "InfogainLoss", "HingeLoss", "ContrastiveLoss", "Accuracy", "Softmax", "ArgMax"})
WIDENABLE = ("Convolution", "InnerProduct")

RANDOM_STD = 0.1   # random-pad: new weights N(0, 0.1^2) (1.1-6)
RANDOM_BIAS = 0.1  # random-pad: new biases 0.1


# ----------------------------------------------------------------------------------------------
# A prototxt and its caffemodel in memory
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class NetModel:
    """A net prototxt (every phase) and its caffemodel, with the TEST-phase net holding the weights.

    `net` supplies blob shapes and the weights as the net computes with them; `param` and `model`
    are what gets edited and written.
    """

    prototxt: str
    weights: str
    param: pb.NetParameter
    model: pb.NetParameter
    net: object  # netcompress.net.Net (TEST phase)

    @property
    def layers(self) -> list[pb.LayerParameter]:
        """The TEST-phase layers, in order."""
        return list(self.net.param.layer)

    def test_layer(self, name: str) -> pb.LayerParameter:
        for lp in self.net.param.layer:
            if lp.name == name:
                return lp
        known = ", ".join(l.name for l in self.net.param.layer)
        raise ToolError(f"{self.prototxt}: no layer '{name}' in the TEST-phase net (layers: {known})")

    def index(self, name: str) -> int:
        for i, lp in enumerate(self.net.param.layer):
            if lp.name == name:
                return i
        raise ToolError(f"{self.prototxt}: no layer '{name}' in the TEST-phase net")

    def shape(self, blob: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.net.blob_shapes[blob])

    def arrays(self, name: str) -> list[np.ndarray]:
        """The layer's blobs as float64 arrays (the values the net computes with)."""
        layer = self.net.layer(name)
        return [getattr(layer, b).detach().cpu().double().numpy().copy() for b in layer.blob_names]

    def stored(self, name: str, types: str = "") -> None:
        """Refuse to edit a layer whose blobs the caffemodel does not hold (the net has fillers)."""
        if not any(l.name == name and len(l.blobs) for l in self.model.layer):
            raise ToolError(f"{self.weights} stores no blobs for layer '{name}'{types} of {self.prototxt}: "
                            "the surgery needs its trained values")


def _build_net(param: pb.NetParameter, what: str):
    from ..net import Net

    try:
        return Net(param, phase=pb.TEST, verbose=False, source=what)
    except NetcompressError as e:
        raise ToolError(f"cannot build the TEST-phase net of {what} (data layers open their sources, "
                        f"relative to the current folder): {net_error_text(e, what)}") from None


def load_model(prototxt: str, weights: str) -> NetModel:
    """Read `prototxt` and `weights` and load them into the TEST-phase net (Caffe's copy rules)."""
    require_files(prototxt, weights)
    param = ncio.read_net(prototxt)
    model = ncio.read_caffemodel(weights)
    net = _build_net(param, prototxt)
    repeated = sorted(n for n, k in Counter(lp.name for lp in net.param.layer).items() if k > 1)
    if repeated:  # every edit finds its layers, and their weights, by name
        raise ToolError(f"{prototxt}: more than one layer of the TEST-phase net is named "
                        f"{', '.join(repr(n) for n in repeated)}; the Net2Net tools find layers by name: give each "
                        "its own")
    try:
        net.copy_from(model, source_name=weights)
    except NetcompressError as e:
        raise ToolError(f"{weights} does not load into {prototxt}: {net_error_text(e, weights)}") from None
    return NetModel(prototxt, weights, param, model, net)


def _rebuild(m: NetModel, param: pb.NetParameter, model: pb.NetParameter, what: str) -> NetModel:
    """The edited net, built and loaded: proves the new prototxt and caffemodel belong together."""
    net = _build_net(param, f"the {what} net")
    try:
        net.copy_from(model, source_name=f"the {what} caffemodel")
    except NetcompressError as e:
        raise ToolError(f"the {what} caffemodel does not load into the {what} net: "
                        f"{net_error_text(e, f'the {what} caffemodel')}") from None
    return NetModel(m.prototxt, m.weights, param, model, net)


def save_model(m: NetModel, out_prototxt: str, out_weights: str) -> None:
    """Write the prototxt (text) and the caffemodel (binary), each atomically."""
    ncio.write_text_proto(out_prototxt, m.param)
    ncio.write_caffemodel(out_weights, m.model)


def count_params(m: NetModel) -> int:
    """Learnable values of the TEST-phase net (BatchNorm statistics and masks are not counted)."""
    return int(sum(e.tensor.numel() for e in m.net.learnable_params() if e.learnable))


def _copy(p: pb.NetParameter) -> pb.NetParameter:
    out = pb.NetParameter()
    out.CopyFrom(p)
    return out


def _to_blob(values: np.ndarray) -> pb.BlobProto:
    return ncio.array_to_blob(np.asarray(values, dtype=np.float32))


def _set_blobs(model: pb.NetParameter, name: str, arrays: Sequence[np.ndarray],
               edit: Callable[[pb.LayerParameter], None] | None = None) -> None:
    """Replace the blobs of every caffemodel layer named `name` (Caffe copies each in turn)."""
    for l in model.layer:
        if l.name == name and len(l.blobs):
            l.ClearField("blobs")
            for a in arrays:
                l.blobs.add().CopyFrom(_to_blob(a))
            if edit is not None:
                edit(l)


def _edit_layers(param: pb.NetParameter, name: str, edit: Callable[[pb.LayerParameter], None]) -> None:
    for l in param.layer:
        if l.name == name:
            edit(l)


def _used_names(m: NetModel) -> set[str]:
    names = set()
    for p in (m.param, m.model):
        for l in p.layer:
            names.add(l.name)
            names.update(l.top)
            names.update(l.bottom)
    return names


def _new_name(m: NetModel, base: str, taken: set[str] | None = None) -> str:
    taken = _used_names(m) | (taken or set())
    if base not in taken:
        return base
    k = 2
    while f"{base}{k}" in taken:
        k += 1
    return f"{base}{k}"


def _rng(seed: int | None) -> tuple[np.random.Generator, int]:
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= INT64_MAX:
        raise ToolError(f"a seed is an integer from 0 to {INT64_MAX}, got {seed!r}")
    return np.random.default_rng(seed), int(seed)


# ----------------------------------------------------------------------------------------------
# net2wider
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Map:
    """Where each channel (or feature) of a blob of the widened net comes from.

    `src[k]` is the old index that position k copies (-1: a fresh random-pad channel); `new[k]` is
    true for the added positions; `old` is the old count. The new channels of the widened layer go
    after its own old ones, so a Concat further down holds them in the middle.
    """

    src: np.ndarray
    new: np.ndarray
    old: int

    @staticmethod
    def identity(c: int) -> "_Map":
        return _Map(np.arange(c), np.zeros(c, bool), c)

    def expand(self, hw: int) -> "_Map":
        """Channel c -> features [c*hw, (c+1)*hw): Caffe's channel-major flatten (1.1-8)."""
        if hw == 1:
            return self
        s = np.arange(hw)
        src = np.where(self.src[:, None] >= 0, self.src[:, None] * hw + s, -1).reshape(-1)
        return _Map(src, np.repeat(self.new, hw), self.old * hw)

    @staticmethod
    def cat(maps: Sequence["_Map"]) -> "_Map":
        srcs, off = [], 0
        for mp in maps:
            srcs.append(np.where(mp.src >= 0, mp.src + off, -1))
            off += mp.old
        return _Map(np.concatenate(srcs), np.concatenate([mp.new for mp in maps]), off)


@dataclasses.dataclass
class WidenResult:
    model: NetModel
    layer: str
    type: str
    old: int
    new: int
    init: str
    seed: int
    copied: list[int] | None          # the source unit of each new unit (net2wider init)
    consumers: list[tuple[str, str, int, int]]  # (name, type, old inputs, new inputs)
    state: list[tuple[str, str]]      # (name, what was replicated)

    def lines(self, noise: float, incoming_noise: float) -> list[str]:
        out = [f"net2wider: layer '{self.layer}' ({self.type}): {self.old} -> {self.new} outputs "
               f"({self.new - self.old} new units), init {self.init}, "
               + (f"noise {noise:g}, incoming noise {incoming_noise:g}, " if self.init == "net2wider" else "")
               + f"seed {self.seed}"]
        for name, t, a, b in self.consumers:
            out.append(f"  consumer '{name}' ({t}): {a} -> {b} inputs")
        for name, what in self.state:
            out.append(f"  per-channel state of '{name}' replicated: {what}")
        if self.copied is None:
            out.append(f"  new units: {self.new - self.old} random units (weights N(0, {RANDOM_STD:g}^2), "
                       f"biases {RANDOM_BIAS:g}); no unit copied")
        else:
            c = np.bincount(np.asarray(self.copied, dtype=np.int64), minlength=self.old)
            out.append(f"  copied units: {int((c > 0).sum())} distinct units of {self.old}, at most "
                       f"{int(c.max()) if len(c) else 0} copies of one")
            pairs = " ".join(f"{self.old + j}<-{u}" for j, u in enumerate(self.copied))
            out.append(f"  new unit <- copied unit: {pairs}")
        return out


def _refuse(m: NetModel, lp: pb.LayerParameter, blob: str, why: str) -> ToolError:
    return ToolError(f"{m.prototxt}: layer '{lp.name}' ({lp.type}) {why} (it reads the widened blob "
                     f"'{blob}'); net2wider refuses it")


def _check_widenable(m: NetModel, lp: pb.LayerParameter) -> None:
    if lp.type not in WIDENABLE:
        raise ToolError(f"{m.prototxt}: layer '{lp.name}' is a {lp.type} layer; net2wider widens Convolution "
                        "and InnerProduct layers (convert DNS/INQ models with dns_to_normal/inq_to_normal first)")
    layer = m.net.layer(lp.name)
    if lp.type == "Convolution" and layer.group != 1:
        raise ToolError(f"{m.prototxt}: layer '{lp.name}' (Convolution) has group {layer.group}: net2wider "
                        "refuses group convolutions (a copied unit would land in another group)")
    if layer.axis != 1 or len(lp.bottom) != 1:
        raise ToolError(f"{m.prototxt}: layer '{lp.name}' ({lp.type}) needs axis 1 and one bottom for "
                        f"net2wider, got axis {layer.axis} and {len(lp.bottom)} bottoms")


def _replicate(a: np.ndarray, mp: _Map, fresh: float) -> np.ndarray:
    """Per-channel state along axis 0 for the new layout; fresh channels get `fresh`."""
    out = a[np.maximum(mp.src, 0)].copy()
    out[mp.src < 0] = fresh
    return out


def _widen_inputs(w: np.ndarray, axis: int, mp: _Map, noise: float, rng: np.random.Generator) -> np.ndarray:
    """A consumer's weights along its input axis: copies divided by their number (1.1-4)."""
    w = np.moveaxis(w, axis, 0)
    if w.shape[0] != mp.old:
        raise ToolError(f"internal: a consumer has {w.shape[0]} inputs, the channel map {mp.old}")
    keep = mp.src >= 0
    counts = np.bincount(mp.src[keep], minlength=mp.old).astype(np.float64)
    out = np.empty((len(mp.src),) + w.shape[1:], dtype=np.float64)
    shape1 = (-1,) + (1,) * (w.ndim - 1)
    out[keep] = w[mp.src[keep]] / counts[mp.src[keep]].reshape(shape1)
    if (~keep).any():  # random-pad: new inputs N(0, 0.1^2), the originals untouched
        out[~keep] = rng.normal(0.0, RANDOM_STD, size=out[~keep].shape)
    elif noise > 0 and mp.new.any():
        d = out[mp.new]
        # noise ~ N(0, (noise * std(D))^2), std over the whole of D; the originals get none (1.1-4)
        out[mp.new] = d + rng.normal(0.0, noise * float(d.std()), size=d.shape)
    return np.moveaxis(out, 0, axis)


def _train_state(param: pb.NetParameter) -> pb.NetState:
    state = pb.NetState(phase=pb.TRAIN)
    if param.HasField("state"):
        merged = pb.NetState()
        merged.CopyFrom(param.state)
        merged.MergeFrom(state)
        merged.phase = pb.TRAIN
        state = merged
    return state


def widen(m: NetModel, layer: str, width: int | None = None, ratio: float | None = None,
          init: str = "net2wider", noise: float = 0.05, incoming_noise: float = 0.0,
          seed: int | None = None) -> WidenResult:
    """Widen `layer` of `m` in memory (see net2wider); the result is built and loaded."""
    if init not in ("net2wider", "random-pad"):
        raise ToolError(f"--init must be net2wider or random-pad, got '{init}'")
    if not (0 <= noise < math.inf and 0 <= incoming_noise < math.inf):  # (NaN or inf: weights of NaN)
        raise ToolError(f"--noise and --incoming-noise must be finite and >= 0, got {noise:g} and "
                        f"{incoming_noise:g}")
    lp = m.test_layer(layer)
    _check_widenable(m, lp)
    field = "convolution_param" if lp.type == "Convolution" else "inner_product_param"
    old = int(getattr(lp, field).num_output)
    if (width is None) == (ratio is None):
        raise ToolError("give exactly one of --width and --ratio")
    if ratio is not None and not 1 < ratio < math.inf:
        raise ToolError(f"--ratio must be a finite number above 1, got {ratio:g}")
    wanted = width if width is not None else ratio * old
    if wanted > INT_MAX:
        raise ToolError(f"layer '{layer}' has {old} outputs; a width of {wanted:.6g} is more than a Caffe blob's "
                        f"{INT_MAX:,} values")
    new = int(wanted)
    if new <= old:
        raise ToolError(f"layer '{layer}' has {old} outputs; the new width must be larger, got {new}"
                        + (f" (--ratio {ratio:g})" if ratio is not None else ""))
    _check_blob_limit(layer, new * max(1, _weights_count(m, layer) // old), f"widened to {new} outputs")
    rng, seed = _rng(seed)
    n = new - old
    g = rng.integers(old, size=n) if init == "net2wider" else None
    top = lp.top[0]
    start = _Map(np.concatenate([np.arange(old), g if g is not None else np.full(n, -1)]),
                 np.concatenate([np.zeros(old, bool), np.ones(n, bool)]), old)

    # Follow the top through channel-wise layers to every consumer (TEST-phase net, with shapes).
    tracked: dict[str, _Map] = {top: start}
    consumers: list[tuple[pb.LayerParameter, int, _Map]] = []  # (layer, input axis, map)
    state: list[tuple[pb.LayerParameter, list[int], list[float], _Map, str]] = []
    handled: dict[str, bool] = {}  # layer name -> whether its tops carry the channels on
    layers = m.layers
    for lq in layers[m.index(layer) + 1:]:
        hits = [b for b in lq.bottom if b in tracked]
        if not hits:
            continue
        b = hits[0]
        mp = tracked[b]
        t = lq.type
        if t in ELEMENTWISE or t in ("Pooling", "Split"):
            pass
        elif t == "PReLU":
            if not lq.prelu_param.channel_shared:
                state.append((lq, [0], [_prelu_fresh(lq)], mp, "PReLU slopes"))
        elif t == "BatchNorm":
            sf = m.arrays(lq.name)[2].reshape(-1)
            # fresh channels (random-pad): mean 0, variance 1 once divided by the scale factor
            state.append((lq, [0, 1], [0.0, float(sf[0]) if sf.size else 1.0], mp, "BatchNorm mean, variance"))
        elif t in ("Scale", "Bias"):
            sp = lq.scale_param if t == "Scale" else lq.bias_param
            ndim = len(m.shape(b))
            if len(lq.bottom) != 1:
                raise _refuse(m, lq, b, f"takes its {t.lower()} from a second bottom '{lq.bottom[1]}'")
            if not -ndim <= sp.axis < ndim or sp.axis % ndim != 1 or sp.num_axes == 0:
                raise _refuse(m, lq, b, f"applies its {t.lower()} from axis {sp.axis} over {sp.num_axes} "
                                        "axes, not per channel (axis 1)")
            if t == "Scale":
                idx = [0, 1] if lq.scale_param.bias_term else [0]
                state.append((lq, idx, [1.0, 0.0][:len(idx)], mp, "Scale gamma" + (", beta" if len(idx) == 2 else "")))
            else:
                state.append((lq, [0], [0.0], mp, "Bias"))
        elif t == "LRN":
            if lq.lrn_param.norm_region == pb.LRNParameter.ACROSS_CHANNELS:
                raise _refuse(m, lq, b, "normalizes ACROSS_CHANNELS, so a copied channel would change its "
                                        "neighbours' outputs")
        elif t == "MVN":
            if lq.mvn_param.across_channels:
                raise _refuse(m, lq, b, "normalizes across channels (across_channels: true)")
        elif t == "Concat":
            if m.net.layer(lq.name).axis != 1:
                raise _refuse(m, lq, b, f"concatenates along axis {m.net.layer(lq.name).axis}, not the "
                                        "channel axis 1")
            tracked_out = _Map.cat([tracked[x] if x in tracked else _Map.identity(m.shape(x)[1])
                                    for x in lq.bottom])
            for tp in lq.top:
                tracked[tp] = tracked_out
            handled[lq.name] = True
            continue
        elif t == "Flatten":
            shape = m.shape(b)
            fp = lq.flatten_param
            a0, a1 = fp.axis % len(shape), fp.end_axis % len(shape)
            if a0 != 1:
                raise _refuse(m, lq, b, f"flattens from axis {fp.axis}, not the channel axis 1")
            mp = mp.expand(math.prod(shape[2:a1 + 1]))
        elif t in WIDENABLE:
            layer_obj = m.net.layer(lq.name)
            if t == "Convolution" and layer_obj.group != 1:
                raise _refuse(m, lq, b, f"is a group convolution (group {layer_obj.group}): the copied "
                                        "channels would be read by another group")
            if len(lq.bottom) != 1:
                raise _refuse(m, lq, b, f"shares its weights over {len(lq.bottom)} bottoms")
            if layer_obj.axis != 1:
                raise _refuse(m, lq, b, f"works from axis {layer_obj.axis}, not the channel axis 1")
            if t == "InnerProduct":
                mp = mp.expand(math.prod(m.shape(b)[2:]))  # a channel owns H*W consecutive inputs
                axis = 0 if layer_obj.transpose else 1
            else:
                axis = 1
            consumers.append((lq, axis, mp))
            handled[lq.name] = False
            continue
        elif t == "Silence":
            handled[lq.name] = False
            continue
        elif t == "Eltwise":
            raise _refuse(m, lq, b, "combines the widened blob element-wise with "
                                    f"{', '.join(repr(x) for x in lq.bottom if x != b) or 'itself'}, whose "
                                    "channels would no longer line up")
        elif t == "Slice":
            raise _refuse(m, lq, b, "slices the widened blob, so its slice points would move")
        elif t in LOSS_LIKE or t.endswith("Loss"):
            raise ToolError(f"{m.prototxt}: the outputs of '{layer}' reach layer '{lq.name}' ({t}) through "
                            f"blob '{b}': widening would change the net's outputs. Widen a layer whose "
                            "output feeds a Convolution or InnerProduct")
        else:
            raise _refuse(m, lq, b, "is not a layer net2wider can follow (it follows channel-wise layers "
                                    "to Convolution and InnerProduct consumers)")
        handled[lq.name] = True
        for tp in lq.top:
            tracked[tp] = mp
    outs = [b for b in tracked if b in m.net.output_names]
    if outs:
        raise ToolError(f"{m.prototxt}: the outputs of '{layer}' reach the net output '{outs[0]}': widening "
                        "would change the net's outputs. Widen a layer whose output feeds a Convolution or "
                        "InnerProduct")
    if not consumers:
        raise ToolError(f"{m.prototxt}: no Convolution or InnerProduct reads the outputs of '{layer}'")
    _check_train_phase(m, layer, top, handled)

    for lq, _, mp in consumers:
        _check_blob_limit(lq.name, _weights_count(m, lq.name) // mp.old * len(mp.src),
                          f"reading the {len(mp.src)} inputs of the widened '{layer}'")
    per_output = sum(int(getattr(m.net.layer(layer), b).numel()) for b in m.net.layer(layer).blob_names) // old
    _check_model_size(m, per_output * n + sum(_weights_count(m, lq.name) // mp.old * (len(mp.src) - mp.old)
                                              for lq, _, mp in consumers),
                      f"widening '{layer}' to {new} outputs")

    # Weights
    m.stored(layer, f" ({lp.type})")
    w1 = m.arrays(layer)
    out_axis = 1 if (lp.type == "InnerProduct" and m.net.layer(layer).transpose) else 0
    W = np.moveaxis(w1[0], out_axis, 0)
    if init == "net2wider":
        add_w = W[g].copy()
        add_b = w1[1][g].copy() if len(w1) > 1 else None
        if incoming_noise > 0:  # Q2: the seed's legacy conv->fc path, 0.05 of each block's std
            add_w += rng.normal(0.0, incoming_noise * float(add_w.std()), size=add_w.shape)
            if add_b is not None:
                add_b += rng.normal(0.0, incoming_noise * float(add_b.std()), size=add_b.shape)
    else:
        add_w = rng.normal(0.0, RANDOM_STD, size=(n,) + W.shape[1:])
        add_b = np.full(n, RANDOM_BIAS) if len(w1) > 1 else None
    new_l = [np.moveaxis(np.concatenate([W, add_w]), 0, out_axis)]
    if add_b is not None:
        new_l.append(np.concatenate([w1[1], add_b]))

    param, model = _copy(m.param), _copy(m.model)

    def set_width(l: pb.LayerParameter) -> None:
        getattr(l, field).num_output = new

    _edit_layers(param, layer, set_width)
    _set_blobs(model, layer, new_l, set_width)
    for lq, idx, fresh, mp, what in state:
        m.stored(lq.name, f" ({lq.type})")
        arrs = m.arrays(lq.name)
        for i, fv in zip(idx, fresh):
            arrs[i] = _replicate(arrs[i], mp, fv)
        _set_blobs(model, lq.name, arrs)
    cons_report = []
    for lq, axis, mp in consumers:
        m.stored(lq.name, f" ({lq.type})")
        arrs = m.arrays(lq.name)
        arrs[0] = _widen_inputs(arrs[0], axis, mp, noise, rng)
        _set_blobs(model, lq.name, arrs)
        cons_report.append((lq.name, lq.type, mp.old, len(mp.src)))
    res = _rebuild(m, param, model, "widened")
    return WidenResult(res, layer, lp.type, old, new, init, seed, None if g is None else [int(x) for x in g],
                       cons_report, [(lq.name, what) for lq, _, _, _, what in state])


def _weights_count(m: NetModel, name: str) -> int:
    layer = m.net.layer(name)
    return int(getattr(layer, layer.blob_names[0]).numel()) if layer.blob_names else 0


def _check_model_size(m: NetModel, extra: int, what: str) -> None:
    """The edited caffemodel must stay readable: protobuf, and so Caffe, reads at most 2 GiB - 1 bytes.
    (Checked before the new weights are made: they take about 30 bytes of memory a value.)"""
    values = sum(len(b.data) + len(b.double_data) for l in m.model.layer for b in l.blobs) + extra
    nbytes = 4 * values
    if nbytes > ncio.MAX_BINARY_PROTO_BYTES:
        raise ToolError(f"{what} would make a model of {values:,} values, {nbytes / 2**30:.1f} GiB as a caffemodel: "
                        f"more than the {ncio.MAX_BINARY_PROTO_BYTES:,} bytes a caffemodel may have (protobuf's "
                        "limit; Caffe could not read it either)")


def _check_blob_limit(name: str, count: int, what: str) -> None:
    if count > INT_MAX:
        raise ToolError(f"layer '{name}' {what} would hold {count:,} weights, more than a Caffe blob's "
                        f"{INT_MAX:,} values")


def _prelu_fresh(lp: pb.LayerParameter) -> float:
    f = lp.prelu_param.filler
    return float(f.value) if lp.prelu_param.HasField("filler") and f.type == "constant" else 0.25


def _check_train_phase(m: NetModel, layer: str, top: str, handled: dict[str, bool]) -> None:
    """Layers of the TRAIN phase only that read the widened channels must be ones net2wider followed
    (by name) or parameter-free element-wise layers; the surgery itself sees the TEST-phase net."""
    from ..net import filter_net

    train = list(filter_net(m.param, _train_state(m.param), verbose=False).layer)
    names = [l.name for l in train]
    if layer not in names:
        return
    tracked = {top}
    for lq in train[names.index(layer) + 1:]:
        hits = [b for b in lq.bottom if b in tracked]
        if not hits:
            continue
        if lq.name in handled:
            carries = handled[lq.name]
        elif lq.type in ELEMENTWISE or lq.type in ("Pooling", "Split"):
            carries = True
        elif lq.type in LOSS_LIKE or lq.type.endswith("Loss"):
            raise ToolError(f"{m.prototxt}: in the TRAIN phase the outputs of '{layer}' reach layer '{lq.name}' "
                            f"({lq.type}) through blob '{hits[0]}': widening would change the net's outputs")
        else:
            raise ToolError(f"{m.prototxt}: layer '{lq.name}' ({lq.type}) reads the widened blob '{hits[0]}' in "
                            "the TRAIN phase only; net2wider adapts the layers of the TEST-phase net. Give it "
                            "a TEST-phase twin or widen another layer")
        if carries:
            tracked.update(lq.top)


# ----------------------------------------------------------------------------------------------
# net2deeper (and the insertions of the mutation search)
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DeepenResult:
    model: NetModel
    after: str           # the layer the new one follows (L, or L's ReLU)
    layer: str           # the new layer
    type: str
    width: int
    relu: str | None     # the copy of L's ReLU, if any
    init: str
    kernel: int | None
    seed: int

    def lines(self, source: str) -> list[str]:
        geo = f", kernel {self.kernel}, pad {(self.kernel - 1) // 2}" if self.kernel else ""
        how = "identity" if self.init == "net2deeper" else "drawn from its fillers"
        out = [f"net2deeper: inserted '{self.layer}' ({self.type} {self.width} -> {self.width}{geo}, {how}) "
               f"after '{self.after}'" + (f", seed {self.seed}" if self.init != "net2deeper" else "")]
        if self.relu:
            out.append(f"  and '{self.relu}' (ReLU, a copy of '{self.after}')")
        else:
            out.append(f"  no ReLU follows '{source}', so none was added")
        return out


def _activation_after(m: NetModel, name: str, refuse_for: str) -> tuple[pb.LayerParameter | None, str]:
    """The plain ReLU that reads `name`'s top first (and the blob to insert after), or (None, top).

    Another activation there is refused: an identity layer behind it is not function-preserving,
    and copying it would not be idempotent.
    """
    lp = m.test_layer(name)
    top = lp.top[0]
    for lq in m.layers[m.index(name) + 1:]:
        if top not in lq.bottom:
            continue
        if lq.type == "ReLU" and lq.relu_param.negative_slope == 0 and len(lq.bottom) == 1:
            return lq, lq.top[0]
        if lq.type in ACTIVATIONS or lq.type == "ReLU":
            what = (f"a leaky ReLU (negative_slope {lq.relu_param.negative_slope:g})" if lq.type == "ReLU"
                    else f"a {lq.type} activation")
            raise ToolError(f"{m.prototxt}: layer '{name}' is followed by '{lq.name}', {what}; {refuse_for} "
                            "needs a plain ReLU or no activation there")
        return None, top
    return None, top


def _insert(param: pb.NetParameter, anchor: str, blob: str, new_layers: Sequence[pb.LayerParameter],
            new_top: str) -> None:
    """Insert `new_layers` after the last layer named `anchor`; every later layer reads `new_top`
    where it read `blob` (in-place layers on `blob` move to `new_top`)."""
    pos = [i for i, l in enumerate(param.layer) if l.name == anchor]
    at = pos[-1] + 1 if pos else len(param.layer)
    later = [pb.LayerParameter() for _ in param.layer[at:]]
    for dst, src in zip(later, param.layer[at:]):
        dst.CopyFrom(src)
    del param.layer[at:]
    for l in new_layers:
        param.layer.add().CopyFrom(l)
    for l in later:
        for i, b in enumerate(l.bottom):
            if b == blob:
                l.bottom[i] = new_top
        for i, t in enumerate(l.top):
            if t == blob:
                l.top[i] = new_top
        param.layer.add().CopyFrom(l)


def _insert_both(m: NetModel, anchors: Sequence[str], blob: str, layers: Sequence[pb.LayerParameter],
                 blobs: dict[str, list[np.ndarray]], new_top: str) -> tuple[pb.NetParameter, pb.NetParameter]:
    """The same insertion in the prototxt and in the caffemodel (whose new layers carry `blobs`)."""
    param, model = _copy(m.param), _copy(m.model)
    _insert(param, anchors[0], blob, layers, new_top)
    with_blobs = []
    for l in layers:
        c = pb.LayerParameter()
        c.CopyFrom(l)
        for a in blobs.get(l.name, []):
            c.blobs.add().CopyFrom(_to_blob(a))
        with_blobs.append(c)
    names = {l.name for l in model.layer}
    anchor = next((a for a in anchors if a in names), anchors[-1])
    _insert(model, anchor, blob, with_blobs, new_top)
    return param, model


def _fillers(lp: pb.LayerParameter) -> tuple[pb.FillerParameter, pb.FillerParameter]:
    """The new layer's fillers: L's, or xavier / constant 0 where L leaves Caffe's constant-0 default."""
    src = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
    wf, bf = pb.FillerParameter(), pb.FillerParameter(type="constant", value=0.0)
    if src.HasField("weight_filler") and src.weight_filler.type != "constant":
        wf.CopyFrom(src.weight_filler)
    else:
        wf.type = "xavier"
    if src.HasField("bias_filler"):
        bf.CopyFrom(src.bias_filler)
    return wf, bf


def _param_specs(dst: pb.LayerParameter, src: pb.LayerParameter, n: int) -> None:
    """L's lr_mult / decay_mult for the new layer (never its sharing names)."""
    for spec in list(src.param)[:n]:
        s = dst.param.add()
        s.CopyFrom(spec)
        s.ClearField("name")


def _conv_layer(name: str, bottom: str, top: str, c_in: int, c_out: int, k: int,
                wf: pb.FillerParameter, bf: pb.FillerParameter | None, like: pb.LayerParameter | None) -> pb.LayerParameter:
    l = pb.LayerParameter(name=name, type="Convolution", bottom=[bottom], top=[top])
    cp = l.convolution_param
    cp.num_output = c_out
    cp.kernel_size.append(k)
    cp.pad.append((k - 1) // 2)
    cp.stride.append(1)
    cp.weight_filler.CopyFrom(wf)
    if bf is None:
        cp.bias_term = False
    else:
        cp.bias_filler.CopyFrom(bf)
    if like is not None:
        _param_specs(l, like, 2 if bf is not None else 1)
        l.include.extend(like.include)
        l.exclude.extend(like.exclude)
    return l


def _draw(shape: tuple[int, ...], filler: pb.FillerParameter, seed: int) -> np.ndarray:
    from ..fillers import fill
    from ..rng import CaffeRNG

    return fill(torch.empty(shape), filler, CaffeRNG(seed)).double().numpy()


def _identity_conv(c: int, k: int) -> np.ndarray:
    w = np.zeros((c, c, k, k))
    w[np.arange(c), np.arange(c), (k - 1) // 2, (k - 1) // 2] = 1.0
    return w


def deepen(m: NetModel, after: str, kernel: int = 3, init: str = "net2deeper", name: str | None = None,
           seed: int | None = None, pool: bool = False) -> DeepenResult:
    """Insert an identity layer after `after` in memory (see net2deeper); the result is built and loaded.

    `pool` (the mutation search's deeper_pool) adds a 2x2 stride-2 max pooling after the new
    convolution and its ReLU; that halves the resolution and is not function-preserving.
    """
    if init not in ("net2deeper", "random-init"):
        raise ToolError(f"--init must be net2deeper or random-init, got '{init}'")
    lp = m.test_layer(after)
    if lp.type not in WIDENABLE:
        raise ToolError(f"{m.prototxt}: layer '{after}' is a {lp.type} layer; net2deeper inserts after "
                        "Convolution and InnerProduct layers")
    top_shape = m.shape(lp.top[0])
    relu, blob = _activation_after(m, after, "net2deeper")
    rng, seed = _rng(seed)
    if name is not None:
        if not name.strip():
            raise ToolError(f"--name must name the new layer, got {name!r}")
        if name in _used_names(m):
            raise ToolError(f"{m.prototxt}: --name {name}: a layer or blob of that name exists already")
        new = name
    else:
        new = _new_name(m, re.sub(r"_deeper\d*$", "", after) + "_deeper")  # conv2_deeper -> conv2_deeper2
    wf, bf = _fillers(lp)
    c = top_shape[1] if len(top_shape) > 1 else 0
    if lp.type == "Convolution":
        if len(top_shape) != 4:
            raise ToolError(f"{m.prototxt}: net2deeper inserts 2-D convolutions; '{after}' has a "
                            f"{len(top_shape)}-D top {list(top_shape)}")
        if kernel < 1 or kernel % 2 == 0:
            raise ToolError(f"--kernel must be a positive odd number (the identity has a centre), got {kernel}")
        _check_blob_limit(new, c * c * kernel * kernel, f"({c} channels, --kernel {kernel})")
        _check_model_size(m, c * c * kernel * kernel + c, f"a {kernel}x{kernel} convolution of {c} channels")
        nl = _conv_layer(new, blob, new, c, c, kernel, wf, bf, lp)
        ident = [_identity_conv(c, kernel), np.zeros(c)]
        geo = kernel
    else:
        if len(top_shape) != 2:
            raise ToolError(f"{m.prototxt}: net2deeper needs the InnerProduct '{after}' to have a 2-D top, "
                            f"got {list(top_shape)}")
        if pool:
            raise ToolError(f"{m.prototxt}: deeper_pool needs a Convolution, '{after}' is an InnerProduct")
        nl = pb.LayerParameter(name=new, type="InnerProduct", bottom=[blob], top=[new])
        nl.inner_product_param.num_output = c
        nl.inner_product_param.weight_filler.CopyFrom(wf)
        nl.inner_product_param.bias_filler.CopyFrom(bf)
        _param_specs(nl, lp, 2)
        nl.include.extend(lp.include)
        nl.exclude.extend(lp.exclude)
        _check_blob_limit(new, c * c, f"({c} outputs, an identity InnerProduct)")
        _check_model_size(m, c * c + c, f"an identity InnerProduct of {c} outputs")
        ident = [np.eye(c), np.zeros(c)]
        geo = None
    if init == "net2deeper":
        values = ident
    else:
        # random-init: the new layer's fillers (L's), drawn with Caffe's stream from --seed
        values = [_draw(tuple(ident[0].shape), wf, seed), _draw((c,), bf, seed + 1)]
    new_layers = [nl]
    relu_name = None
    if relu is not None:
        rl = pb.LayerParameter()
        rl.CopyFrom(relu)
        relu_name = _new_name(m, f"{new}_relu", {new})
        rl.name = relu_name
        del rl.bottom[:]
        del rl.top[:]
        rl.bottom.append(new)
        rl.top.append(new)
        new_layers.append(rl)
    out_top = new
    if pool:
        pname = _new_name(m, f"{new}_pool", {new, relu_name or ""})
        pl = pb.LayerParameter(name=pname, type="Pooling", bottom=[new], top=[pname])
        pl.pooling_param.pool = pb.PoolingParameter.MAX
        pl.pooling_param.kernel_size = 2
        pl.pooling_param.stride = 2
        new_layers.append(pl)
        out_top = pname
    anchors = [relu.name, after] if relu is not None else [after]
    param, model = _insert_both(m, anchors, blob, new_layers, {new: values}, out_top)
    res = _rebuild(m, param, model, "deepened")
    return DeepenResult(res, relu.name if relu is not None else after, new, nl.type, c, relu_name, init, geo, seed)


# ----------------------------------------------------------------------------------------------
# Skip and group insertions (mutation search only, 1.4)
# ----------------------------------------------------------------------------------------------

def add_skip(m: NetModel, a: str, b: str, init: str = "zero", seed: int = 0) -> tuple[NetModel, str]:
    """Eltwise SUM of `b`'s output and a projection of `a`'s output (both after their ReLUs).

    As the seed's `add_skip`: a max pooling with stride 1 and kernel diff+1 aligns the sizes and a
    1x1 convolution maps `a`'s channels to `b`'s. `init` "zero" starts that convolution at zero,
    so the mutation is function-preserving (netcompress's choice); "filler" draws it (xavier), as
    the seed did, which is not.
    """
    _, a_out = _activation_after(m, a, "add_skip")
    relu_b, b_out = _activation_after(m, b, "add_skip")
    sa, sb = m.shape(a_out), m.shape(b_out)
    if len(sa) != 4 or len(sb) != 4 or sa[2] < sb[2] or sa[3] < sb[3]:
        raise ToolError(f"add_skip: the output of '{a}' {list(sa)} cannot be aligned with that of '{b}' {list(sb)}")
    base = _new_name(m, f"skip_{a}_{b}")
    layers, blobs = [], {}
    src = a_out
    if sa[2:] != sb[2:]:
        pl = pb.LayerParameter(name=f"{base}_align", type="Pooling", bottom=[src], top=[f"{base}_align"])
        pl.pooling_param.pool = pb.PoolingParameter.MAX
        pl.pooling_param.kernel_h, pl.pooling_param.kernel_w = sa[2] - sb[2] + 1, sa[3] - sb[3] + 1
        pl.pooling_param.stride = 1
        layers.append(pl)
        src = pl.top[0]
    proj = _conv_layer(f"{base}_proj", src, f"{base}_proj", sa[1], sb[1], 1,
                       pb.FillerParameter(type="xavier"), None, None)
    layers.append(proj)
    blobs[proj.name] = [np.zeros((sb[1], sa[1], 1, 1)) if init == "zero"
                        else _draw((sb[1], sa[1], 1, 1), proj.convolution_param.weight_filler, seed)]
    el = pb.LayerParameter(name=base, type="Eltwise", bottom=[b_out, proj.top[0]], top=[base])
    el.eltwise_param.operation = pb.EltwiseParameter.SUM
    layers.append(el)
    anchors = [relu_b.name, b] if relu_b is not None else [b]
    param, model = _insert_both(m, anchors, b_out, layers, blobs, base)
    return _rebuild(m, param, model, "mutated"), base


def add_group(m: NetModel, after: str, groups: int) -> tuple[NetModel, str]:
    """Insert `groups` towers after `after` (after its ReLU), concatenated back (1.4 `Group`).

    Tower i: a 1x1 convolution that picks its slice of the channels, a 3x3 identity convolution and
    a PReLU. Slices are as even as np.array_split makes them (the seed floored the width to a
    multiple of the group count). The PReLU slope is 0, as in the seed, when the input passed a
    ReLU, and 1 otherwise, so the insertion is function-preserving either way.
    """
    lp = m.test_layer(after)
    if lp.type != "Convolution":
        raise ToolError(f"add_group: '{after}' is a {lp.type}, not a Convolution")
    relu, blob = _activation_after(m, after, "add_group")
    shape = m.shape(blob)
    c = shape[1]
    if groups < 1 or groups > c:
        raise ToolError(f"add_group: {groups} towers for {c} channels")
    base = _new_name(m, f"{after}_group")
    slope = 0.0 if relu is not None else 1.0
    layers, blobs, tops = [], {}, []
    off = 0
    xavier = pb.FillerParameter(type="xavier")
    for i, part in enumerate(np.array_split(np.arange(c), groups)):
        ci = len(part)
        sel = _conv_layer(f"{base}_t{i}_select", blob, f"{base}_t{i}_select", c, ci, 1, xavier, None, None)
        w = np.zeros((ci, c, 1, 1))
        w[np.arange(ci), off + np.arange(ci), 0, 0] = 1.0
        off += ci
        conv = _conv_layer(f"{base}_t{i}_conv", sel.top[0], f"{base}_t{i}_conv", ci, ci, 3, xavier,
                           pb.FillerParameter(type="constant", value=0.0), None)
        pr = pb.LayerParameter(name=f"{base}_t{i}_prelu", type="PReLU", bottom=[conv.top[0]], top=[conv.top[0]])
        pr.prelu_param.filler.type = "constant"
        pr.prelu_param.filler.value = slope
        layers += [sel, conv, pr]
        blobs[sel.name] = [w]
        blobs[conv.name] = [_identity_conv(ci, 3), np.zeros(ci)]
        blobs[pr.name] = [np.full(ci, slope)]
        tops.append(conv.top[0])
    cat = pb.LayerParameter(name=base, type="Concat", bottom=tops, top=[base])
    layers.append(cat)
    anchors = [relu.name, after] if relu is not None else [after]
    param, model = _insert_both(m, anchors, blob, layers, blobs, base)
    return _rebuild(m, param, model, "mutated"), base


# ----------------------------------------------------------------------------------------------
# Random mutation (1.4)
# ----------------------------------------------------------------------------------------------

MUTATION_OPS = ("deeper", "deeper_pool", "wider", "skip", "group")
D_MAX = 20  # the seed's model_max_depth


@dataclasses.dataclass
class Mutation:
    op: str
    target: str
    detail: str
    model: NetModel
    weights: dict[str, int]
    tries: list[str]
    params_before: int
    params_after: int

    def as_dict(self) -> dict:
        return {"op": self.op, "target": self.target, "detail": self.detail, "weights": self.weights,
                "refused_tries": self.tries, "params_before": self.params_before,
                "params_after": self.params_after}


def _weight_layers(m: NetModel) -> list[pb.LayerParameter]:
    return [l for l in m.layers if l.type in WIDENABLE]


def _data_hw(m: NetModel) -> tuple[int, int] | None:
    for lp in m.layers:
        if not lp.bottom and lp.top:
            s = m.shape(lp.top[0])
            if len(s) == 4:
                return s[2], s[3]
    return None


def op_weights(m: NetModel, ops: Sequence[str]) -> dict[str, int]:
    """The seed's operation weights (1.4): deeper_pool 20 - 3P (0 once P >= P_lim), deeper 10,
    wider 10, skip and group 2 * floor(depth / 2); depth counts Convolution layers, P max poolings."""
    depth = sum(1 for l in m.layers if l.type == "Convolution")
    pools = sum(1 for l in m.layers if l.type == "Pooling" and l.pooling_param.pool == pb.PoolingParameter.MAX
                and not l.pooling_param.global_pooling)
    hw = _data_hw(m)
    p_lim = int(math.floor(math.log2(min(hw)))) - 2 if hw else 0
    w = {"deeper_pool": 0 if pools >= p_lim else D_MAX - 3 * pools, "deeper": D_MAX // 2,
         "wider": D_MAX // 2, "skip": 2 * (depth // 2), "group": 2 * (depth // 2)}
    return {k: max(0, v) for k, v in w.items() if k in ops}


def _check_mutation_args(ops: Sequence[str], max_width: int) -> None:
    bad = [o for o in ops if o not in MUTATION_OPS]
    if bad or not ops:
        raise ToolError(f"--ops: unknown operation(s) {', '.join(bad) or '(none given)'}; choose from "
                        f"{', '.join(MUTATION_OPS)}")
    if max_width < 1:
        raise ToolError(f"--max-width must be at least 1, got {max_width}")


def mutate(m: NetModel, ops: Sequence[str] = MUTATION_OPS, seed: int | None = None, max_width: int = 1024,
           kernel: int = 3, skip_init: str = "zero", max_tries: int = 100) -> Mutation:
    """One random mutation of `m` (1.4): draw an operation by weight and a layer uniformly; retry
    (up to `max_tries`) when the surgery refuses that layer."""
    _check_mutation_args(ops, max_width)
    rng, seed = _rng(seed)
    weights = op_weights(m, ops)
    names = [k for k, v in weights.items() if v > 0]
    if not names:
        raise ToolError(f"{m.prototxt}: every operation of --ops {','.join(ops)} has weight 0 for this net "
                        f"(weights {weights})")
    p = np.array([weights[k] for k in names], dtype=np.float64)
    p /= p.sum()
    # the last weight layer's outputs are the net's: never widened nor followed (1.1-9)
    wl = _weight_layers(m)[:-1]
    convs = [l for l in wl if l.type == "Convolution"]
    tries: list[str] = []
    before = count_params(m)
    for _ in range(max_tries):
        op = names[int(rng.choice(len(names), p=p))]
        sub = int(rng.integers(2**31))
        try:
            if op == "wider":
                if not wl:
                    raise ToolError("no layer to widen")
                lp = wl[int(rng.integers(len(wl)))]
                field = "convolution_param" if lp.type == "Convolution" else "inner_product_param"
                cur = int(getattr(lp, field).num_output)
                new = int(cur + rng.random() * (max_width - cur))  # the seed's rule (1.1-9)
                if new <= cur:
                    raise ToolError(f"new width {new} <= {cur}")
                r = widen(m, lp.name, width=new, seed=sub)
                return Mutation(op, lp.name, f"wider {lp.name} {cur}->{new}", r.model, weights, tries, before,
                                count_params(r.model))
            if op in ("deeper", "deeper_pool"):
                cands = wl if op == "deeper" else convs
                if not cands:
                    raise ToolError("no layer to follow")
                lp = cands[int(rng.integers(len(cands)))]
                d = deepen(m, lp.name, kernel=kernel, seed=sub, pool=op == "deeper_pool")
                _check_shapes_kept(m, d.model, op, lp.name)
                return Mutation(op, lp.name, f"{op} after {lp.name} (+{d.layer})", d.model, weights, tries,
                                before, count_params(d.model))
            if op == "skip":
                if len(convs) < 2:
                    raise ToolError("fewer than 2 convolutions")
                i, j = sorted(rng.choice(len(convs), size=2, replace=False))
                a, b = convs[int(i)].name, convs[int(j)].name
                r, nm = add_skip(m, a, b, init=skip_init, seed=sub)
                return Mutation(op, b, f"skip {a} -> {b} (+{nm})", r, weights, tries, before, count_params(r))
            if op == "group":
                if not convs:
                    raise ToolError("no convolution")
                lp = convs[int(rng.integers(len(convs)))]
                g = int(rng.integers(1, 5))  # the seed's randint(1, 5): 1..4 towers
                r, nm = add_group(m, lp.name, g)
                return Mutation(op, lp.name, f"group after {lp.name}, {g} towers (+{nm})", r, weights, tries,
                                before, count_params(r))
        except ToolError as e:
            tries.append(f"{op}: {e}")
    raise ToolError(f"{m.prototxt}: no mutation succeeded in {max_tries} tries; the last: {tries[-1]}")


def _check_shapes_kept(old: NetModel, new: NetModel, op: str, at: str) -> None:
    """deeper_pool halves the resolution: refuse it when a later weight layer would change shape."""
    for name, layer in old.net.named_layers():
        if not layer.blob_names or not new.net.has_layer(name):
            continue
        nl = new.net.layer(name)
        for bn in layer.blob_names:
            a, b = tuple(getattr(layer, bn).shape), tuple(getattr(nl, bn).shape)
            if a != b:
                raise ToolError(f"{op} after '{at}' would change the {bn} of '{name}' from {list(a)} to {list(b)}")


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------

def net2wider(in_prototxt: str, in_weights: str, out_prototxt: str, out_weights: str, layer: str,
              width: int | None = None, ratio: float | None = None, init: str = "net2wider",
              noise: float = 0.05, incoming_noise: float = 0.0, seed: int | None = None,
              quiet: bool = False) -> WidenResult:
    """Widen `layer` to `width` (or int(ratio * old)) outputs and write the new prototxt and model."""
    refuse_overwrites((out_prototxt, out_weights), writes=(None, "the caffemodel"), input_prototxt=in_prototxt,
                      input_model=in_weights)
    with quiet_console():
        m = load_model(in_prototxt, in_weights)
        r = widen(m, layer, width, ratio, init, noise, incoming_noise, seed)
        save_model(r.model, out_prototxt, out_weights)
    if not quiet:
        for line in r.lines(noise, incoming_noise):
            print(line)
        print(f"wrote {out_prototxt} and {out_weights}")
    return r


def net2deeper(in_prototxt: str, in_weights: str, out_prototxt: str, out_weights: str, after: str,
               kernel: int = 3, init: str = "net2deeper", name: str | None = None, seed: int | None = None,
               quiet: bool = False) -> DeepenResult:
    """Insert an identity layer (or a random one) after `after` and write the new prototxt and model."""
    refuse_overwrites((out_prototxt, out_weights), writes=(None, "the caffemodel"), input_prototxt=in_prototxt,
                      input_model=in_weights)
    with quiet_console():
        m = load_model(in_prototxt, in_weights)
        r = deepen(m, after, kernel, init, name, seed)
        save_model(r.model, out_prototxt, out_weights)
    if not quiet:
        for line in r.lines(after):
            print(line)
        print(f"wrote {out_prototxt} and {out_weights}")
    return r


def net2net_mutate(in_prototxt: str, in_weights: str, out_dir: str, ops: Sequence[str] = MUTATION_OPS,
                   seed: int | None = None, max_width: int = 1024, skip_init: str = "zero",
                   quiet: bool = False) -> Mutation:
    """One random mutation; writes out_dir/net.prototxt, net.caffemodel and mutation.json."""
    _, seed = _rng(seed)
    refuse_overwrites([os.path.join(out_dir, f) for f in ("net.prototxt", "net.caffemodel", "mutation.json")],
                      input_prototxt=in_prototxt, input_model=in_weights)  # (mutating a mutant in its folder)
    with quiet_console():
        m = load_model(in_prototxt, in_weights)
        mu = mutate(m, ops, seed, max_width=max_width, skip_init=skip_init)
        os.makedirs(out_dir, exist_ok=True)
        proto, weights = os.path.join(out_dir, "net.prototxt"), os.path.join(out_dir, "net.caffemodel")
        save_model(mu.model, proto, weights)
    info = {"source_prototxt": in_prototxt, "source_weights": in_weights, "seed": seed, **mu.as_dict()}
    ncio.atomic_write(os.path.join(out_dir, "mutation.json"), json.dumps(info, indent=2) + "\n")
    if not quiet:
        wtxt = ", ".join(f"{k} {v}" for k, v in mu.weights.items())
        print(f"net2net_mutate: {mu.detail}; parameters {mu.params_before:,} -> {mu.params_after:,} "
              f"(seed {seed}; operation weights {wtxt}; {len(mu.tries)} refused tries)")
        for t in mu.tries:
            print(f"  refused: {t}")
        print(f"wrote {proto}, {weights} and {os.path.join(out_dir, 'mutation.json')}")
    return mu


# ----------------------------------------------------------------------------------------------
# The mutation search: mutate -> fine-tune -> keep the best
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_console():
    """Raise netcompress's console handlers to WARNING meanwhile: net set-up and data layers log at
    INFO, and a command prints its own lines."""
    from ..log import LOGGER_NAME

    console = [h for h in logging.getLogger(LOGGER_NAME).handlers if getattr(h, "_netcompress", False)]
    levels = [h.level for h in console]
    for h in console:
        h.setLevel(max(logging.WARNING, h.level))
    try:
        yield
    finally:
        for h, lvl in zip(console, levels):
            h.setLevel(lvl)


@contextlib.contextmanager
def training_log(path: str):
    """Send netcompress's log (INFO and up, glog format) to `path` only, not to the console."""
    from ..log import LOGGER_NAME, GlogFormatter

    logger = logging.getLogger(LOGGER_NAME)
    fh = logging.FileHandler(path, mode="w")
    fh.setFormatter(GlogFormatter())
    fh.setLevel(logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not into an application's or pytest's root handlers either
    logger.addHandler(fh)
    try:
        with quiet_console():
            yield
    finally:
        logger.removeHandler(fh)
        fh.close()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _score(prototxt: str, weights: str, iters: int) -> tuple[float, float]:
    """(accuracy, loss) of the TEST-phase net over `iters` batches (netcompress test)."""
    from ..solvers.evaluate import test_net
    from ..net import Net

    net = Net(prototxt, phase=pb.TEST, verbose=False)
    net.copy_from(weights)
    s = test_net(net, iters)
    acc = next((v for n, v, _ in s.outputs if "accuracy" in n.lower()), float("nan"))
    return float(acc), float(s.loss)


def net2net_search(prototxt: str, weights: str, solver: str, out_dir: str, generations: int = 3,
                   population: int = 2, iters: int | None = None, ops: Sequence[str] = MUTATION_OPS,
                   seed: int = 1, max_width: int = 1024, skip_init: str = "zero") -> dict:
    """A small random mutation search (1.4): each generation mutates every survivor once, fine-tunes
    the child with the solver (`netcompress train` from the child's weights), and keeps the best
    `population` of survivors and children by test accuracy (then loss). Survivors are not trained
    again. Writes out_dir/search.log (readable), search.json and search.png (accuracy against
    parameters)."""
    with quiet_console():
        return _search(prototxt, weights, solver, out_dir, generations, population, iters, ops, seed, max_width,
                       skip_init)


def _search(prototxt, weights, solver, out_dir, generations, population, iters, ops, seed, max_width,
            skip_init) -> dict:
    from ..solvers import Solver

    require_files(prototxt, weights, solver)
    if generations < 1 or population < 1:
        raise ToolError(f"--generations and --population must be at least 1, got {generations} and {population}")
    sp = ncio.read_solver(solver)
    if not len(sp.test_iter):
        raise ToolError(f"{solver}: the search scores children on the test net: set test_iter")
    iters = int(iters if iters is not None else sp.max_iter)
    require_int_flag(iters, "--iters", 1, error=ToolError)  # the child solvers' max_iter (an int32)
    _check_mutation_args(ops, max_width)
    test_iters = int(sp.test_iter[0])
    rng, seed = _rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "search.log")
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        ncio.atomic_write(log_path, "\n".join(lines) + "\n")

    t0 = time.time()
    say(f"net2net search: {generations} generation(s), population {population}, {iters} fine-tune iterations "
        f"per child ({solver}), operations {','.join(ops)}, seed {seed}, max width {max_width}")
    root = load_model(prototxt, weights)
    acc, loss = _score(prototxt, weights, test_iters)
    inds = [{"id": 0, "generation": 0, "parent": None, "mutation": "start", "prototxt": prototxt,
             "weights": weights, "params": count_params(root), "accuracy": acc, "loss": loss,
             "accuracy_after_mutation": acc, "loss_after_mutation": loss, "seconds": 0.0}]
    say(f"#0   generation 0  start                                   params {inds[0]['params']:>10,}  "
        f"acc {acc:.4f}  loss {loss:.4f}")
    survivors = [inds[0]]
    for gen in range(1, generations + 1):
        children = []
        for parent in survivors:
            cid = len(inds)
            folder = os.path.join(out_dir, f"ind{cid}")
            t = time.time()
            pm = load_model(parent["prototxt"], parent["weights"])
            mu = mutate(pm, ops, int(rng.integers(2**31)), max_width=max_width, skip_init=skip_init)
            os.makedirs(folder, exist_ok=True)
            cproto = os.path.join(folder, "net.prototxt")
            cweights = os.path.join(folder, "mutated.caffemodel")
            save_model(mu.model, cproto, cweights)
            ncio.atomic_write(os.path.join(folder, "mutation.json"), json.dumps(mu.as_dict(), indent=2) + "\n")
            csp = pb.SolverParameter()
            csp.CopyFrom(sp)
            csp.ClearField("train_net")
            csp.ClearField("net_param")
            csp.ClearField("train_net_param")
            csp.ClearField("test_net")
            csp.net = cproto
            csp.max_iter = iters
            # no test nets in the run: every score comes from a fresh TEST net over the same batches
            csp.ClearField("test_iter")
            csp.ClearField("test_state")
            csp.test_interval = 0
            csp.snapshot = 0
            csp.snapshot_prefix = os.path.join(folder, "finetuned")
            csp.snapshot_after_train = True
            spath = os.path.join(folder, "solver.prototxt")
            ncio.write_text_proto(spath, csp)
            acc0, loss0 = _score(cproto, cweights, test_iters)
            with training_log(os.path.join(folder, "train.log")):
                Solver(spath, weights=cweights, verbose=False).solve()
            final = f"{csp.snapshot_prefix}_iter_{iters}.caffemodel"
            acc1, loss1 = _score(cproto, final, test_iters)
            child = {"id": cid, "generation": gen, "parent": parent["id"], "mutation": mu.detail,
                     "op": mu.op, "prototxt": cproto, "weights": final, "params": mu.params_after,
                     "accuracy_after_mutation": acc0, "loss_after_mutation": loss0,
                     "accuracy": acc1, "loss": loss1, "seconds": round(time.time() - t, 1)}
            inds.append(child)
            children.append(child)
            say(f"#{cid:<3} generation {gen}  from #{parent['id']}: {mu.detail:<40} params {child['params']:>10,}  "
                f"acc {child['accuracy_after_mutation']:.4f} -> {child['accuracy']:.4f}  "
                f"loss {child['loss_after_mutation']:.4f} -> {child['loss']:.4f}  ({child['seconds']:.0f} s)")
        pool = survivors + children
        pool.sort(key=lambda r: (-r["accuracy"], r["loss"]))
        survivors = pool[:population]
        say(f"     generation {gen} keeps " + ", ".join(f"#{r['id']} (acc {r['accuracy']:.4f})" for r in survivors))
    best = survivors[0]
    say(f"best: #{best['id']} ({best['mutation']}), acc {best['accuracy']:.4f}, loss {best['loss']:.4f}, "
        f"params {best['params']:,}: {best['prototxt']} {best['weights']}")
    say(f"total time {time.time() - t0:.0f} s")
    summary = {"individuals": inds, "best": best["id"], "settings": {
        "prototxt": prototxt, "weights": weights, "solver": solver, "generations": generations,
        "population": population, "iters": iters, "ops": list(ops), "seed": seed, "max_width": max_width},
        "seconds": round(time.time() - t0, 1)}
    ncio.atomic_write(os.path.join(out_dir, "search.json"), json.dumps(summary, indent=2) + "\n")
    _plot_search(summary, os.path.join(out_dir, "search.png"))
    return summary


def _plot_search(s: dict, path: str) -> None:
    import io as _io

    from ..pyplot import pyplot
    plt = pyplot()

    inds = s["individuals"]
    by_id = {r["id"]: r for r in inds}
    fig, ax = plt.subplots(figsize=(8, 5))
    gens = max(r["generation"] for r in inds)
    cmap = plt.get_cmap("viridis")
    for r in inds:
        if r["parent"] is not None:
            p = by_id[r["parent"]]
            ax.annotate("", xy=(r["params"], 100 * r["accuracy"]), xytext=(p["params"], 100 * p["accuracy"]),
                        arrowprops=dict(arrowstyle="->", color="0.6", lw=0.8))
    for r in inds:
        ax.scatter(r["params"], 100 * r["accuracy"], color=cmap(r["generation"] / max(1, gens)), s=40, zorder=3)
        ax.annotate(f"#{r['id']} {r.get('op', 'start')}", (r["params"], 100 * r["accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    b = by_id[s["best"]]
    ax.scatter(b["params"], 100 * b["accuracy"], marker="*", s=220, facecolor="none", edgecolor="tab:red",
               zorder=4, label=f"best #{b['id']}")
    ax.set_xlabel("learnable parameters")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title("net2net mutation search (colour: generation)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    ncio.atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Entry points (compression_scripts/*.py and `netcompress <command>`)
# ----------------------------------------------------------------------------------------------

def _run_parsed(p: argparse.ArgumentParser, argv: Sequence[str] | None, body: Callable[[argparse.Namespace], None]) -> int:
    """`run_tool`'s parsing, then `body` inside `run_main`'s boundary (which also reports a bug in one line and
    saves its traceback, and describes an OSError), so run_tool's own error handler never fires."""

    def run(a: argparse.Namespace) -> int:
        def guarded_body(_: list[str]) -> int:
            body(a)
            return 0
        return run_main(guarded_body, p.format_usage(), [], None)
    return run_tool(p, argv, run)


def _io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("in_prototxt", help="the net prototxt (a train_val net is read in its TEST phase)")
    p.add_argument("in_caffemodel", help="its trained weights")
    p.add_argument("out_prototxt", help="the new net prototxt")
    p.add_argument("out_caffemodel", help="the new weights")


def net2wider_main(argv: Sequence[str] | None = None) -> int:
    """`net2wider <in.prototxt> <in.caffemodel> <out.prototxt> <out.caffemodel> --layer L (--width W | --ratio R)`"""
    p = argparse.ArgumentParser(
        prog="net2wider", description="Net2WiderNet (Chen et al. 2016): give a Convolution or InnerProduct "
        "layer more outputs by copying its units; every consumer (followed through ReLU/PReLU, BatchNorm, "
        "Scale, Bias, Pooling, Dropout, Concat and Flatten) divides the copied inputs by their number of "
        "copies, so the net computes the same function (exactly with --noise 0).")
    _io_args(p)
    p.add_argument("--layer", required=True, help="the layer to widen")
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--width", type=int, help="the new number of outputs")
    w.add_argument("--ratio", type=float, help="new width = int(ratio * old width)")
    p.add_argument("--init", choices=["net2wider", "random-pad"], default="net2wider",
                   help="net2wider (default) or the random-pad baseline: new weights N(0, 0.1^2), new "
                        "biases 0.1, the old weights untouched")
    p.add_argument("--noise", type=float, default=0.05,
                   help="noise on the copies' outgoing weights, as a fraction of their std (default 0.05)")
    p.add_argument("--incoming-noise", type=float, default=0.0,
                   help="noise on the copied incoming weights and biases, as a fraction of their std "
                        "(default 0; the seed's legacy conv->fc path used 0.05)")
    p.add_argument("--seed", type=seed_arg(), default=None, help="random seed (default: drawn, and printed)")
    return _run_parsed(p, argv, lambda a: net2wider(
        a.in_prototxt, a.in_caffemodel, a.out_prototxt, a.out_caffemodel, a.layer, a.width, a.ratio, a.init,
        a.noise, a.incoming_noise, a.seed))


def net2deeper_main(argv: Sequence[str] | None = None) -> int:
    """`net2deeper <in.prototxt> <in.caffemodel> <out.prototxt> <out.caffemodel> --after L`"""
    p = argparse.ArgumentParser(
        prog="net2deeper", description="Net2DeeperNet (Chen et al. 2016): insert an identity Convolution "
        "(odd kernel, pad (k-1)/2) or InnerProduct after a layer, after its ReLU if it has one (the ReLU is "
        "copied behind the new layer). Refused when the layer is followed by another activation.")
    _io_args(p)
    p.add_argument("--after", required=True, help="the Convolution or InnerProduct layer to follow")
    p.add_argument("--kernel", type=int, default=3, help="kernel size of a new convolution (odd, default 3)")
    p.add_argument("--init", choices=["net2deeper", "random-init"], default="net2deeper",
                   help="net2deeper (identity, default) or the random-init baseline (the new layer's "
                        "fillers, copied from the layer it follows)")
    p.add_argument("--name", default=None, help="name of the new layer and its top (default <after>_deeper)")
    p.add_argument("--seed", type=seed_arg(), default=None, help="random seed of --init random-init")
    return _run_parsed(p, argv, lambda a: net2deeper(
        a.in_prototxt, a.in_caffemodel, a.out_prototxt, a.out_caffemodel, a.after, a.kernel, a.init, a.name,
        a.seed))


def _ops(text: str) -> list[str]:
    return [o.strip() for o in text.split(",") if o.strip()]


def net2net_mutate_main(argv: Sequence[str] | None = None) -> int:
    """`net2net_mutate <in.prototxt> <in.caffemodel> <out_dir> --ops deeper,deeper_pool,wider,skip,group --seed S`"""
    p = argparse.ArgumentParser(
        prog="net2net_mutate", description="One random mutation of a net with the operation weights of "
        "NetworkCompress's GA.py: deeper_pool 20-3P (0 once P reaches floor(log2(min(H,W)))-2), deeper 10, "
        "wider 10, skip and group 2*floor(depth/2). Writes OUT_DIR/net.prototxt, net.caffemodel and "
        "mutation.json.")
    p.add_argument("in_prototxt")
    p.add_argument("in_caffemodel")
    p.add_argument("out_dir")
    p.add_argument("--ops", default=",".join(MUTATION_OPS), help="operations to draw from (default all)")
    p.add_argument("--seed", type=seed_arg(), default=None, help="random seed (default: drawn, and printed)")
    p.add_argument("--max-width", type=int, default=1024, help="wider draws the new width up to this (default 1024)")
    p.add_argument("--skip-init", choices=["zero", "filler"], default="zero",
                   help="the skip projection starts at zero (function-preserving, default) or from xavier "
                        "(the seed)")
    return _run_parsed(p, argv, lambda a: net2net_mutate(
        a.in_prototxt, a.in_caffemodel, a.out_dir, _ops(a.ops), a.seed, a.max_width, a.skip_init))


def net2net_search_main(argv: Sequence[str] | None = None) -> int:
    """`net2net_search <train_val.prototxt> <weights> <solver.prototxt> <out_dir>`"""
    p = argparse.ArgumentParser(
        prog="net2net_search", description="A small random mutation search: each generation mutates every "
        "survivor once (net2net_mutate), fine-tunes the child with the solver, and keeps the best by test "
        "accuracy. Writes OUT_DIR/search.log, search.json and search.png (accuracy against parameters).")
    p.add_argument("prototxt", help="the train_val net of the starting model")
    p.add_argument("weights", help="the starting model")
    p.add_argument("solver", help="solver for the fine-tuning (its net, max_iter and snapshots are replaced)")
    p.add_argument("out_dir")
    p.add_argument("--generations", type=int, default=3, help="default 3")
    p.add_argument("--population", type=int, default=2, help="survivors per generation (default 2)")
    p.add_argument("--iters", type=int, default=None, help="fine-tune iterations per child (default: max_iter)")
    p.add_argument("--ops", default=",".join(MUTATION_OPS), help="operations to draw from (default all)")
    p.add_argument("--seed", type=seed_arg(), default=1, help="random seed (default 1)")
    p.add_argument("--max-width", type=int, default=1024, help="wider draws the new width up to this (default 1024)")
    p.add_argument("--skip-init", choices=["zero", "filler"], default="zero")
    return _run_parsed(p, argv, lambda a: net2net_search(
        a.prototxt, a.weights, a.solver, a.out_dir, a.generations, a.population, a.iters, _ops(a.ops), a.seed,
        a.max_width, a.skip_init))
