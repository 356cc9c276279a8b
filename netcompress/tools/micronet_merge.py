"""`micronet_merge`: a quantized student (ActQuant + QuantConvolution/QuantInnerProduct, BatchNorm + Scale) into
the integer deploy net of MicroNet (recipes-spec §4.9, §5.5): integer weights, per-channel Scale and IntQuant.

The merge follows each blob of the student's TEST net as `real = f ⊙ blob + g`, a per-channel affine map still to
be applied to the deploy net's blob, and emits a layer only where the map cannot travel further:

- BatchNorm (global statistics μ = mean/s, σ = sqrt(var/s + eps)) and Scale (γ, β) emit nothing: f ← γf/σ,
  g ← γ(g − μ)/σ + β.
- ReLU whose every consumer is an ActQuant emits nothing either: ActQuant's code after a ReLU is
  clamp(round(z/α), max(lb, 0), ub), so the IntQuant plays the ReLU (§4.9).
- ActQuant (α, range [lb, ub]) emits `Scale(f/α, g/α)` + `IntQuant(lb, ub)`: the blob then holds the integer
  codes, with f = α, g = 0.
- QuantConvolution / QuantInnerProduct emit a bias-free Convolution / InnerProduct with the integer codes
  q = clamp(round((W⊙M)/α_c), −2^(b−1), 2^(b−1) − 1) of their stored per-channel α_c (`w_alpha`) as weights; the
  output map is f ← f_in·α_c, g ← b⊙m (the bias, if any). This needs a uniform f_in and g_in = 0 (codes or a
  real blob).
- Average pooling without padding and max pooling with f > 0 let the map through.
- Where a map must be applied (a Concat, the net's output, any other layer, or a consumer that cannot take it),
  a `Scale(f, g)` is emitted on the blob, with `bias_term: true` (the bias blob 0 where g = 0).

On the MicroNet DenseNet this gives exactly the source's `densenet_final` (§4.9): per bottleneck
Scale(γ₁/(α₁σ₁), (β₁ − γ₁μ₁/σ₁)/α₁) → IntQuant → conv1(q) → Scale(γ₂α₁w₁/(α₂σ₂), (β₂ − γ₂μ₂/σ₂)/α₂) → IntQuant →
conv2(q) → Scale(α₂w₂, 0) before the Concat; per transition Scale → IntQuant → conv(q) → avgpool → Scale(αw, 0);
the first conv (fp32 input) → Scale(w₀, 0); the head Scale (BN folded) → ReLU → avgpool → fc(q) → Scale(α_fc, b).
The source flipped the sign of weights under a negative scale product; a Scale takes negative factors, so no flip
is needed. Since every step is the student's arithmetic regrouped, the deploy net reproduces the student's TEST
logits up to float rounding (an activation within rounding of a code boundary may land on the neighbouring code).

Names: a deploy layer keeps its student layer's name (Convolution, InnerProduct, Pooling, ReLU, Concat, ...); an
ActQuant becomes the IntQuant of the same name; a Scale that applies a folded BatchNorm takes the name of the
student's Scale (or BatchNorm) layer it folds, and one that de-quantizes a layer's output is `<layer>_scale`.

Layers: the ancestors of the output blob (`--output`, default the first bottom of the first loss layer: the
student's logits, also in a KD net) in the TEST phase, with the data layer replaced by an `Input` of batch 1.
Convolution/InnerProduct layers that are not Quant layers (plain or masked) are quantized here, per output
channel with 100 ALS steps (§4.6) to `--weight-bits` (convolutions) or `--fc-bits` (inner products): a
post-training quantization, reported as such. A Quant layer keeps its own bit width; a bit flag that contradicts
it is an error.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from .. import ops
from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb
from ._common import ToolError, dims_arg, net_error_text, refuse_overwrites, require_files, run_tool

__all__ = ["merge_micronet", "MergeResult", "main"]

ALS_ITERS = 100


@dataclasses.dataclass
class _State:
    """real value = f ⊙ blob + g, per channel (axis 1), for one version of a student blob."""

    blob: str                       # the deploy net's blob holding it
    f: np.ndarray | None = None     # (C,) float64; None: ones
    g: np.ndarray | None = None     # (C,) float64; None: zeros
    relu: bool = False              # a ReLU is still to be applied (only ActQuant consumers)
    origin: str | None = None       # the student's last BatchNorm/Scale layer folded into f, g

    @property
    def identity(self) -> bool:
        return self.f is None and self.g is None and not self.relu

    def uniform_f(self) -> bool:
        return self.f is None or bool(np.all(self.f == self.f[0]))

    def g_zero(self) -> bool:
        return self.g is None or not np.any(self.g)


@dataclasses.dataclass
class MergeResult:
    deploy: pb.NetParameter          # the deploy prototxt (no blobs)
    model: pb.NetParameter           # the caffemodel (layers with blobs)
    lines: list[str]                 # what the command prints
    output: str                      # the logits blob


def _is_loss(lp: pb.LayerParameter) -> bool:
    from ..layers.base import registered_class

    cls = registered_class(lp.type)
    return (cls is not None and cls.is_loss) or lp.type.endswith("Loss") or len(lp.loss_weight) > 0


def _output_blob(layers: list[pb.LayerParameter], prototxt: str) -> str:
    for lp in layers:
        if _is_loss(lp) and lp.bottom:
            return lp.bottom[0]
    consumed = {b for lp in layers for b in lp.bottom}
    outs = [t for lp in layers for t in lp.top if t not in consumed]
    outs = list(dict.fromkeys(outs))
    if len(outs) != 1:
        raise ToolError(f"{prototxt}: no loss layer names the logits and the TEST net has {len(outs)} output blobs "
                        f"({', '.join(outs) or 'none'}); say which with --output")
    return outs[0]


def _ancestors(layers: list[pb.LayerParameter], output: str) -> list[pb.LayerParameter]:
    """The layers the output blob depends on, in order (reverse liveness; in-place layers keep their blob
    needed)."""
    needed = {output}
    keep = []
    for lp in reversed(layers):
        tops = set(lp.top)
        if tops & needed:
            keep.append(lp)
            needed = (needed - tops) | set(lp.bottom)
    return list(reversed(keep))


def _data_shapes(lp: pb.LayerParameter, prototxt: str) -> dict[str, tuple[int, ...]]:
    """Top shapes of a data layer (it opens its source), by top name."""
    from ..net import Net

    netp = pb.NetParameter(name="data")
    q = netp.layer.add()
    q.CopyFrom(lp)
    q.ClearField("include")
    q.ClearField("exclude")
    try:
        net = Net(netp, phase=pb.TEST, verbose=False, source=prototxt)
    except NetcompressError as e:
        raise ToolError(f"{prototxt}: cannot open data layer '{lp.name}' to learn the input shape "
                        f"({net_error_text(e, prototxt)}); give "
                        "--input C,H,W") from None
    return {t: tuple(net.blob_shapes[t]) for t in lp.top}


def _student_net(prototxt: str, weights: str, output: str | None, input_shape: Sequence[int] | None):
    """The student's TEST-phase subnet computing `output`, data layers replaced by Input, weights loaded."""
    from ..layers.base import layer_class
    from ..net import Net, filter_net

    param = ncio.read_net(prototxt)
    state = pb.NetState(phase=pb.TEST)
    if param.HasField("state"):
        state.MergeFrom(param.state)
        state.phase = pb.TEST
    layers = list(filter_net(param, state, verbose=False).layer)
    out = output or _output_blob(layers, prototxt)
    if not any(out in lp.top for lp in layers):
        raise ToolError(f"{prototxt}: no layer of the TEST net produces the output blob '{out}'")
    kept = _ancestors(layers, out)
    sub = pb.NetParameter(name=param.name)
    for lp in kept:
        cls = layer_class(lp.type)
        if cls.is_data or cls.is_input:
            needed = [t for t in lp.top if any(t in k.bottom for k in kept)]
            if input_shape is not None:
                if len(needed) != 1:
                    raise ToolError(f"{prototxt}: --input gives one input shape, the data layer '{lp.name}' "
                                    f"feeds {len(needed)} blobs ({', '.join(needed)})")
                shapes = {needed[0]: (1, *input_shape)}
            elif lp.type == "Input":
                dims = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
                dims = dims * len(lp.top) if len(dims) == 1 else dims
                shapes = dict(zip(lp.top, dims))
            else:
                shapes = _data_shapes(lp, prototxt)
            q = sub.layer.add(name=lp.name, type="Input")
            for t in needed:
                if t not in shapes:  # (a KeyError before)
                    raise ToolError(f"{prototxt}: the {lp.type} layer '{lp.name}' gives no shape for its top '{t}' "
                                    f"({len(lp.input_param.shape)} input_param.shape for {len(lp.top)} top(s)); "
                                    "give one, or --input C,H,W")
                q.top.append(t)
                q.input_param.shape.add().dim.extend([1, *shapes[t][1:]])
            continue
        q = sub.layer.add()
        q.CopyFrom(lp)
    net = Net(sub, phase=pb.TEST, verbose=False, source=prototxt)  # its layers are the prototxt's
    stored = {l.name for l in ncio.read_caffemodel(weights).layer if len(l.blobs)}
    missing = [n for n, l in net.named_layers() if l.blob_names and n not in stored]
    if missing:
        raise ToolError(f"{weights} stores no blobs for layer{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)} of {prototxt}: the model does not belong to this net")
    net.copy_from(weights)
    return net, sub, out


def _ones(c: int) -> np.ndarray:
    return np.ones(c, dtype=np.float64)


def _zeros(c: int) -> np.ndarray:
    return np.zeros(c, dtype=np.float64)


class _Merger:
    def __init__(self, net, sub: pb.NetParameter, output: str, weight_bits: int | None, fc_bits: int | None,
                 prototxt: str):
        self.net, self.sub, self.output, self.prototxt = net, sub, output, prototxt
        self.weight_bits, self.fc_bits = weight_bits, fc_bits
        self.deploy = pb.NetParameter(name=(sub.name or "net") + "-int")
        self.model = pb.NetParameter(name=self.deploy.name)
        self.names: set[str] = set()
        self.lines: list[str] = []
        self.states: dict[str, _State] = {}     # current version of each student blob
        self.consumers: dict[tuple[str, int], list[int]] = {}
        # student layers that keep their name in the deploy net (folded BatchNorm/Scale layers do not)
        self.reserved = {lp.name for lp in sub.layer
                         if lp.type not in ("BatchNorm", "Scale") or (lp.type == "Scale" and len(lp.bottom) != 1)}
        self._versions()

    # -- graph ------------------------------------------------------------------------------
    def _versions(self) -> None:
        """consumers[(blob, version)] = indices of the layers reading that version."""
        version: dict[str, int] = {}
        self.bottom_versions: list[list[tuple[str, int]]] = []
        self.top_versions: list[list[tuple[str, int]]] = []
        for i, lp in enumerate(self.sub.layer):
            bv = [(b, version.get(b, 0)) for b in lp.bottom]
            for v in bv:
                self.consumers.setdefault(v, []).append(i)
            tv = []
            for t in lp.top:
                version[t] = version.get(t, 0) + 1
                tv.append((t, version[t]))
                self.consumers.setdefault((t, version[t]), [])
            self.bottom_versions.append(bv)
            self.top_versions.append(tv)
        self.final = (self.output, version.get(self.output, 0))

    def channels(self, blob: str) -> int:
        shape = self.net.blob_shapes[blob]
        return int(shape[1]) if len(shape) >= 2 else 1

    def where(self, lp: pb.LayerParameter) -> str:
        return f"{self.prototxt}: layer '{lp.name}' ({lp.type})"

    # -- emitting ---------------------------------------------------------------------------
    def _name(self, want: str, generated: bool) -> str:
        """A unique layer name: a student layer keeps its own; a generated one (a Scale) avoids the names of
        the student layers that appear in the deploy net under their own name."""
        name, k = want, 1
        while name in self.names or (generated and name in self.reserved):
            name, k = f"{want}_{k}", k + 1
        self.names.add(name)
        return name

    def emit(self, lp: pb.LayerParameter, blobs: Sequence[np.ndarray] = (), generated: bool = False
             ) -> pb.LayerParameter:
        lp.name = self._name(lp.name, generated)
        self.deploy.layer.add().CopyFrom(lp)
        m = self.model.layer.add()
        m.CopyFrom(lp)
        for a in blobs:
            ncio.array_to_blob(np.ascontiguousarray(a, dtype=np.float32), m.blobs.add())
        return lp

    def emit_scale(self, name: str, bottom: str, top: str, f: np.ndarray, g: np.ndarray) -> None:
        lp = pb.LayerParameter(name=name, type="Scale", bottom=[bottom], top=[top])
        lp.scale_param.bias_term = True
        self.emit(lp, [f.astype(np.float32), g.astype(np.float32)], generated=True)

    def materialize(self, st: _State, top: str, producer: str) -> _State:
        """Apply st's map with a Scale writing `top`; returns the identity state of `top`."""
        if st.relu:
            raise ToolError(f"{self.prototxt}: internal: a deferred ReLU on '{top}' reached a consumer other than "
                            "ActQuant")
        c = self.channels(top)
        f = st.f if st.f is not None else _ones(c)
        g = st.g if st.g is not None else _zeros(c)
        self.emit_scale(st.origin or f"{producer}_scale", st.blob, top, f, g)
        return _State(top)

    # -- absorbing --------------------------------------------------------------------------
    def absorbs(self, i: int, st: _State) -> bool:
        """Whether layer i can take its input with st's map still pending."""
        lp = self.sub.layer[i]
        t = lp.type
        layer = self.net.layer(lp.name)
        if st.relu:
            return t == "ActQuant"
        if t in ("BatchNorm", "ActQuant"):
            return True
        if t == "Scale":
            return len(lp.bottom) == 1
        if t == "ReLU":
            return self._relu_deferred(i)
        if t == "Pooling":
            pp = lp.pooling_param
            pad = pp.pad or pp.pad_h or pp.pad_w
            if pp.pool == pb.PoolingParameter.AVE:
                return not pad or st.g_zero()
            if pp.pool == pb.PoolingParameter.MAX:
                return st.f is None or bool(np.all(st.f > 0))
            return False
        if getattr(layer, "weight_param", "") and not getattr(layer, "transposed", False):
            return st.uniform_f() and st.g_zero()
        return False

    def _relu_deferred(self, i: int) -> bool:
        lp = self.sub.layer[i]
        if lp.relu_param.negative_slope != 0:
            return False
        readers = self.consumers[self.top_versions[i][0]]
        return bool(readers) and all(self.sub.layer[j].type == "ActQuant" for j in readers)

    def settle(self, i: int, st: _State, producer: str) -> None:
        """Record st as the new version of layer i's first top, applying it first if a reader needs it."""
        v = self.top_versions[i][0]
        top = v[0]
        readers = self.consumers[v]
        if not st.identity and (v == self.final or not readers or not all(self.absorbs(j, st) for j in readers)):
            st = self.materialize(st, top, producer)
        self.states[top] = st

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> None:
        for i, lp in enumerate(self.sub.layer):
            ins = [self.states[b] if b in self.states else _State(b) for b in lp.bottom]
            handler = getattr(self, f"_do_{lp.type}", None)
            layer = self.net.layer(lp.name)
            if lp.type == "Input":
                self.emit(_copy_plain(lp))
                for t in lp.top:
                    self.states[t] = _State(t)
            elif handler is not None:
                handler(i, lp, layer, ins)
            elif getattr(layer, "weight_param", ""):
                self._weights(i, lp, layer, ins)
            elif layer.blob_names:
                raise ToolError(f"{self.where(lp)}: micronet_merge has no integer form for a layer with blobs of "
                                "this type (it folds BatchNorm, Scale and ActQuant, and integerises Convolution "
                                "and InnerProduct)")
            else:
                self._plain(i, lp, ins)

    def _plain(self, i: int, lp: pb.LayerParameter, ins: list[_State]) -> None:
        q = _copy_plain(lp)
        del q.bottom[:]
        q.bottom.extend(s.blob for s in ins)
        self.emit(q)
        for t in lp.top:
            self.states[t] = _State(t)

    def _do_BatchNorm(self, i, lp, layer, ins) -> None:
        if not layer.use_global_stats:
            raise ToolError(f"{self.where(lp)} uses batch statistics in the TEST phase (use_global_stats: false): "
                            "there are no statistics to fold")
        st = ins[0]
        c = self.channels(lp.bottom[0])
        sf = float(layer.scale_factor.reshape(-1)[0])
        factor = 0.0 if sf == 0 else 1.0 / sf
        mean = layer.mean.detach().double().numpy() * factor
        var = layer.variance.detach().double().numpy() * factor
        bad = np.flatnonzero(~(var + layer.eps > 0) | ~np.isfinite(var + layer.eps) | ~np.isfinite(mean))
        if bad.size:
            k = int(bad[0])
            raise ToolError(f"{self.where(lp)}: cannot fold channel {k}: its mean {mean[k]:g} and variance + eps "
                            f"{var[k]:g} + {layer.eps:g} must be finite and the sum positive (the deploy net would "
                            "divide by the square root of a number that is not)")
        sigma = np.sqrt(var + layer.eps)
        f = (st.f if st.f is not None else _ones(c)) / sigma
        g = ((st.g if st.g is not None else _zeros(c)) - mean) / sigma
        self.settle(i, _State(st.blob, f, g, origin=lp.name), lp.name)

    def _do_Scale(self, i, lp, layer, ins) -> None:
        if len(lp.bottom) != 1:
            return self._plain(i, lp, ins)
        st = ins[0]
        c = self.channels(lp.bottom[0])
        gamma = layer.blobs()[0].detach().double().numpy().reshape(-1)
        if gamma.size == 1:
            gamma = np.full(c, gamma[0])
        if gamma.size != c:
            raise ToolError(f"{self.where(lp)}: only a per-channel Scale (axis 1, num_axes 1) can be folded; its "
                            f"scale has {gamma.size} values for {c} channels")
        beta = (layer.blobs()[1].detach().double().numpy().reshape(-1) if len(layer.blob_names) > 1
                else _zeros(c))
        if beta.size == 1:
            beta = np.full(c, beta[0])
        f = gamma * (st.f if st.f is not None else _ones(c))
        g = gamma * (st.g if st.g is not None else _zeros(c)) + beta
        self.settle(i, _State(st.blob, f, g, origin=lp.name), lp.name)

    def _do_ReLU(self, i, lp, layer, ins) -> None:
        st = ins[0]
        if self._relu_deferred(i):
            self.states[lp.top[0]] = dataclasses.replace(st, relu=True)
            return
        self._plain(i, lp, ins)

    def _do_ActQuant(self, i, lp, layer, ins) -> None:
        st = ins[0]
        alpha = float(layer.alpha.reshape(-1)[0])
        if not alpha > 0:
            raise ToolError(f"{self.where(lp)}: alpha is {alpha:g} in the weights: the layer was never calibrated")
        lb, ub = layer.quant_range()
        if st.relu:
            lb = max(lb, 0)  # relu(z) then clamp(round(./α), lb, ub) = clamp(round(z/α), max(lb, 0), ub)
        top = lp.top[0]
        c = self.channels(top)
        f = (st.f if st.f is not None else _ones(c)) / alpha
        g = (st.g if st.g is not None else _zeros(c)) / alpha
        bottom = st.blob
        if np.any(f != 1) or np.any(g != 0):
            self.emit_scale(st.origin or f"{lp.name}_scale", st.blob, top, f, g)
            bottom = top
        q = pb.LayerParameter(name=lp.name, type="IntQuant", bottom=[bottom], top=[top])
        q.int_quant_param.low, q.int_quant_param.high = lb, ub
        self.emit(q)
        self.lines.append(f"{lp.name}: ActQuant -> IntQuant [{lb}, {ub}] (alpha {alpha:.6g})")
        self.settle(i, _State(top, np.full(c, alpha)), lp.name)

    def _do_Pooling(self, i, lp, layer, ins) -> None:
        st = ins[0]
        q = _copy_plain(lp)
        q.bottom[0] = st.blob
        self.emit(q)
        self.settle(i, _State(lp.top[0], st.f, st.g, origin=None), lp.name)

    def _weights(self, i, lp, layer, ins) -> None:
        if getattr(layer, "transposed", False):
            raise ToolError(f"{self.where(lp)}: a Deconvolution has no MicroNet integer form")
        if layer.mask_kind == "inq":
            raise ToolError(f"{self.where(lp)}: INQ weights are powers of two, not MicroNet integer codes; convert "
                            "the model with inq_to_normal first")
        st = ins[0]
        if not (st.uniform_f() and st.g_zero() and not st.relu):
            raise ToolError(f"{self.where(lp)}: internal: input map not applied")
        conv = layer.weight_param == "convolution_param"
        flag = self.weight_bits if conv else self.fc_bits
        transpose = getattr(layer, "transpose", False)
        w = layer.weight.detach()
        rows = w.t() if transpose else w
        if layer.mask_kind == "quant":
            bits = layer.bitwidth
            if flag is not None and flag != bits:
                raise ToolError(f"{self.where(lp)} was trained with {bits}-bit weights (weight_quant_param), but "
                                f"--{'weight' if conv else 'fc'}-bits says {flag}")
            mask = layer.weight_mask.t() if transpose else layer.weight_mask
            alpha = layer.w_alpha.detach()
            how = "quantized in training"
        else:
            bits = flag if flag is not None else (4 if conv else 6)
            mask = None
            if layer.mask_kind:
                mask = (layer.weight_mask == 1).to(w.dtype)
                mask = mask.t() if transpose else mask
            alpha = ops.quant_weight_fit(rows, mask, bits, ALS_ITERS)
            how = f"post-training quantization ({ALS_ITERS} ALS steps), it was trained in float"
        low, high = ops.weight_quant_range(bits)
        codes = ops.quant_weight_codes(rows.contiguous(), None if mask is None else mask.contiguous(), alpha, low,
                                       high)
        codes = codes.t() if transpose else codes
        q = pb.LayerParameter(name=lp.name, type="Convolution" if conv else "InnerProduct",
                              bottom=[st.blob], top=list(lp.top))
        if conv:
            q.convolution_param.CopyFrom(lp.convolution_param)
            cp = q.convolution_param
        else:
            q.inner_product_param.CopyFrom(lp.inner_product_param)
            cp = q.inner_product_param
        cp.bias_term = False
        cp.ClearField("weight_filler")
        cp.ClearField("bias_filler")
        self.emit(q, [codes.numpy()])
        nz = int(codes.count_nonzero())
        self.lines.append(f"{lp.name}: {bits}-bit integer weights in [{int(codes.min())}, {int(codes.max())}], "
                          f"{nz}/{codes.numel()} non-zero ({how})")
        c = self.channels(lp.top[0])
        f_in = 1.0 if st.f is None else float(st.f[0])
        f = f_in * alpha.double().numpy()
        g = None
        if layer.bias_term:
            b = layer.effective_bias().detach().double().numpy()
            g = b if np.any(b) else None
        if f.size != c:
            raise ToolError(f"{self.where(lp)}: {f.size} weight scales for {c} output channels")
        self.settle(i, _State(lp.top[0], f, g), lp.name)


def _copy_plain(lp: pb.LayerParameter) -> pb.LayerParameter:
    q = pb.LayerParameter()
    q.CopyFrom(lp)
    for f in ("blobs", "param", "include", "exclude", "loss_weight", "propagate_down"):
        q.ClearField(f)
    return q


def merge_micronet(prototxt: str, weights: str, *, weight_bits: int | None = None, fc_bits: int | None = None,
                   output: str | None = None, input_shape: Sequence[int] | None = None) -> MergeResult:
    """The integer deploy net of the student `prototxt` with `weights` (see the module docstring)."""
    require_files(prototxt, weights)
    for what, bits in (("--weight-bits", weight_bits), ("--fc-bits", fc_bits)):
        if bits is not None and not 2 <= bits <= 16:
            raise ToolError(f"{what} must be in 2..16, got {bits}")
    net, sub, out = _student_net(prototxt, weights, output, input_shape)
    m = _Merger(net, sub, out, weight_bits, fc_bits, prototxt)
    with torch.no_grad():
        m.run()
    types: dict[str, int] = {}
    for lp in m.deploy.layer:
        types[lp.type] = types.get(lp.type, 0) + 1
    m.lines.append("deploy net: " + ", ".join(f"{n} {t}" for t, n in types.items()) + f"; output '{out}'")
    return MergeResult(m.deploy, m.model, m.lines, out)


def main(argv: Sequence[str] | None = None) -> int:
    """`micronet_merge <train.prototxt> <weights> <out_deploy.prototxt> <out.caffemodel> [--weight-bits 4] ...`"""
    p = argparse.ArgumentParser(
        prog="netcompress micronet_merge",
        description="Merge a quantized student (BatchNorm + Scale + ActQuant + QuantConvolution) into MicroNet's "
                    "integer deploy net: integer weights, per-channel Scale and IntQuant layers (recipes-spec 4.9).")
    p.add_argument("prototxt", help="the student's train/test prototxt (its TEST phase is merged)")
    p.add_argument("weights", help="the student's .caffemodel (with ActQuant alpha, w_alpha, masks, BN statistics)")
    p.add_argument("out_prototxt", help="the deploy prototxt to write")
    p.add_argument("out_model", help="the deploy .caffemodel to write")
    p.add_argument("--weight-bits", type=int, default=None,
                   help="bits of convolutions that are not QuantConvolution (post-training, default 4); for a "
                        "QuantConvolution it must equal its bitwidth")
    p.add_argument("--fc-bits", type=int, default=None,
                   help="bits of inner products that are not QuantInnerProduct (post-training, default 6); for a "
                        "QuantInnerProduct it must equal its bitwidth")
    p.add_argument("--output", default=None, help="the logits blob (default: the first loss layer's first bottom)")
    p.add_argument("--input", type=dims_arg("1,28,28"), default=None, metavar="C,H,W",
                   help="input shape instead of opening the data layer's source")

    def run(a: argparse.Namespace) -> int:
        refuse_overwrites((a.out_prototxt, a.out_model), writes=(None, "the caffemodel"), student_prototxt=a.prototxt,
                          student_model=a.weights)
        r = merge_micronet(a.prototxt, a.weights, weight_bits=a.weight_bits, fc_bits=a.fc_bits, output=a.output,
                           input_shape=a.input)
        ncio.write_text_proto(a.out_prototxt, r.deploy)
        ncio.write_caffemodel(a.out_model, r.model)
        for line in r.lines:
            print(line)
        print(f"Wrote {a.out_prototxt} and {a.out_model}")
        return 0
    return run_tool(p, argv, run)
