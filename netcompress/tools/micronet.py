"""`micronet_score` and `import_pth`: the MicroNet Challenge score of an integer deploy net, and
PyTorch state dicts into caffemodels (recipes-spec 4.12, 5.5, Q15).

**Score** (the source's `score.py` with `flops_utils.py`). Counts are "32-bit equivalents" of one
forward of a 1 x C x H x W input; ``score = ops / ref_ops + params / ref_params`` with the
CIFAR-100 reference (WideResNet-28-10: 10.49e9 ops, 36.5e6 params) or the ImageNet one
(MobileNetV2 1.4: 1170e6 ops, 6.9e6 params). Per layer, with a and w the activation and weight
bits (defaults: a = 32 for the first weight layer and the last, 4 elsewhere; w = 6 for the last,
4 elsewhere), N the weights, nnz the non-zero ones, C the outputs, K = N / C, H x W the output
size, density = nnz / N:

- Convolution / InnerProduct parameters: (N + nnz w) / 32 (a 1-bit mask plus w bits per non-zero);
- multiplications: density H W C K max(w, a) / 32;
- additions, a = 32: density H W C (K - 1) (32-bit); otherwise by the convolution rule of the score
  type: *tree* sums, per output channel with n non-zero weights, the adder tree
  ``sum_level floor(len/2) (w + a + level)`` times H W / 32; *fixed* counts
  ``floor(log2((2^a - 1)(2^(a-1) - 1) K)) + 1`` bits x (n - 1) x H W / 32; *fp32* as for a = 32;
- InnerProduct always takes the fp32 rule;
- ReLU: numel / 2; IntQuant: 0; Concat (and Split, Flatten, Reshape, Dropout, Silence, Input): 0;
- Scale, FP16 rule: numel / 2 ops and C / 2 params when its bias is 0, else numel ops and C params;
  FP32 rule: numel / 2 + numel ops with a bias;
- average Pooling, FP16 rule: k numel_out / 2; FP32 rule: (k - 1) numel_out + numel_out / 2, with k
  the kernel's element count.

Score types (the source's hook tables): 0 tree/FP16/FP16 (the published score), 1 fixed/FP16/FP16,
2 fp32/FP32/FP32, 3 fixed/FP32/FP32, 4 tree/FP32/FP32, 5 tree/FP16/FP32, 6 fixed/FP16/FP32
(convolution rule / Scale rule / AvgPool rule).

``count="faithful"`` (the default) reproduces the published numbers with the source's quirks:

- Scale: C is the *batch* size (the hook read ``input[0].size(0)`` of a 1 x C x H x W tensor), so
  each Scale counts 0.5 or 1 parameter; and "bias is 0" means its first element is 0;
- AvgPool: ``kernel_size: k`` counts k, not k x k (``prod`` of an int); ``kernel_h``/``kernel_w``
  and global pooling count kh x kw (PyTorch's tuple form);
- fixed rule: the a = 32 additions are divided by 32 a second time (the fixed-width hook divides
  after its a = 32 branch). Section 4.12 does not say so, but the published totals show it: the
  first convolution of the released net (24 x 3 x 3 x 3, 427 non-zero, 32 x 32 outputs) adds
  427 x 26624 / 27 in the tree rule, whose fractional part 17/27 (+ the FC's) is that of the type-0
  total, ...632553607, while types 1 and 6 end in ...9288, 25/27: 427 x 26624 / (27 x 32).
- fixed rule: a channel with no non-zero weight counts -1 x bits additions (n - 1 = -1).

``count="corrected"`` counts what the rules say: C channels per Scale (bias 0 only if all of it is
0), k_h x k_w for every average pooling, 32-bit additions once, and no negative additions.

**Import** (`import_pth`): a state dict saved by PyTorch (``torch.load(weights_only=True)``, no
pickled code; a ``{"state_dict": ...}`` wrapper and a DataParallel ``module.`` prefix are
unwrapped) becomes a caffemodel for a deploy prototxt by a named map. The map
``micronet-densenet-final`` sends ``<a>.<b>.<m>.weight``/``.bias`` to blob 0/1 of layer
``<a>.<b>_<m>`` (``conv1.weight`` to layer ``conv1``), which are the names `make_densenet --form
deploy` writes; Scale tensors of shape (1, C, 1) (the source's ``densenet_merged``) are flattened to
(C). A plain list of tensors (the source's merge output) fills the prototxt's blobs in order.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import pickle
from typing import Callable, Mapping, Sequence

import numpy as np

from .. import io as ncio
from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb
from ._common import ToolError, dims_arg, fmt_shape, refuse_overwrites, require_files, run_tool

__all__ = ["SCORE_TYPES", "REFERENCES", "adder_tree_bits", "parse_bits", "LayerScore", "ScoreResult",
           "micronet_score", "format_score", "score_main", "MAPS", "import_pth", "import_pth_main",
           "deploy_layers", "DeployLayer"]

Shape = tuple[int, ...]

# score type -> (convolution additions, Scale rule, AvgPool rule), the source's __hook_fn_dictN__
SCORE_TYPES: dict[int, tuple[str, str, str]] = {
    0: ("tree", "fp16", "fp16"),
    1: ("fixed", "fp16", "fp16"),
    2: ("fp32", "fp32", "fp32"),
    3: ("fixed", "fp32", "fp32"),
    4: ("tree", "fp32", "fp32"),
    5: ("tree", "fp16", "fp32"),
    6: ("fixed", "fp16", "fp32"),
}
_CONV_RULE_TEXT = {"tree": "adder tree", "fixed": "fixed-width integer", "fp32": "FP32"}

# name -> (reference ops, reference params)
REFERENCES: dict[str, tuple[float, float]] = {
    "cifar100": (10.49e9, 36.5e6),   # WideResNet-28-10
    "imagenet": (1170e6, 6.9e6),     # MobileNetV2 (width 1.4)
}

DEFAULT_ACT_BITS = {"first": 32, "default": 4, "last": 32}
DEFAULT_WEIGHT_BITS = {"default": 4, "last": 6}

_FREE_TYPES = frozenset({"Input", "Concat", "Split", "Flatten", "Reshape", "Dropout", "Silence"})
_SCORED_TYPES = ("Convolution", "InnerProduct", "Scale", "IntQuant", "ReLU", "Pooling (AVE)")


# ----------------------------------------------------------------------------------------------
# Shapes and blobs of a deploy net, without running it
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DeployLayer:
    """One TEST-phase layer with its bottom/top shapes (batch 1) and the shapes of its blobs."""

    param: pb.LayerParameter
    bottoms: list[Shape]
    tops: list[Shape]
    blob_shapes: list[Shape]

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type


def _without_fillers(lp: pb.LayerParameter) -> pb.LayerParameter:
    # Shapes only: constant fillers cost nothing, random ones would draw for every weight.
    q = pb.LayerParameter()
    q.CopyFrom(lp)
    for sub, fields in (("convolution_param", ("weight_filler", "bias_filler")),
                        ("inner_product_param", ("weight_filler", "bias_filler")),
                        ("scale_param", ("filler", "bias_filler"))):
        if q.HasField(sub):
            for f in fields:
                getattr(q, sub).ClearField(f)
    return q


def deploy_layers(prototxt: str, input_shape: Sequence[int] | None = None) -> tuple[pb.NetParameter, list[DeployLayer]]:
    """The TEST-phase layers of `prototxt` with Caffe's top shapes for a batch of one.

    Input layers give the shape (batch set to 1), or `input_shape` (C, H, W) for the one input.
    Shapes come from each layer's own set-up in the layer registry; ``IntQuant`` (element-wise)
    keeps its bottom's shape when the registry does not know it. Data layers are refused: a
    deploy net starts from Input.
    """
    from ..layers.base import LayerContext, create_layer, known_layer_types, layer_class
    from ..net import filter_net

    param = ncio.read_net(prototxt)
    state = pb.NetState(phase=pb.TEST)
    if param.HasField("state"):
        state.MergeFrom(param.state)
        state.phase = pb.TEST
    filtered = filter_net(param, state, verbose=False)
    known = set(known_layer_types())
    ctx = LayerContext(phase=pb.TEST)
    shapes: dict[str, Shape] = {}
    out: list[DeployLayer] = []
    n_inputs = sum(len(lp.top) for lp in filtered.layer if lp.type == "Input")
    if input_shape is not None and n_inputs != 1:
        raise ToolError(f"{prototxt}: --input gives the shape of one input blob; the net has {n_inputs}")
    for lp in filtered.layer:
        where = f"{prototxt}: layer '{lp.name}' ({lp.type})"
        bottoms = []
        for b in lp.bottom:
            if b not in shapes:
                raise ToolError(f"{where}: unknown bottom blob '{b}'")
            bottoms.append(shapes[b])
        blob_shapes: list[Shape] = []
        if lp.type == "Input":
            if input_shape is not None:
                tops = [(1, *(int(d) for d in input_shape))]
            else:
                dims = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
                if len(dims) == 1:
                    dims = dims * len(lp.top)
                if len(dims) != len(lp.top) or any(len(d) == 0 for d in dims):
                    raise ToolError(f"{where}: input_param needs one shape per top (or one for all)")
                tops = [(1, *d[1:]) for d in dims]
        elif lp.type == "IntQuant" and "IntQuant" not in known:
            tops = [bottoms[0]] * len(lp.top)
        else:
            try:
                if layer_class(lp.type).is_data:
                    raise ToolError(f"{where}: a deploy net starts from an Input layer; this is a data layer "
                                    "(write the deploy form, e.g. make_densenet without sources)")
                layer = create_layer(_without_fillers(lp), bottoms, ctx)
                tops = [tuple(s) for s in layer.top_shapes(bottoms)]
                blob_shapes = [tuple(int(d) for d in t.shape) for t in layer.blobs()]
            except ToolError:
                raise
            except NetcompressError as e:  # the layer's own errors name it already
                said = str(e)
                named = said.startswith(f"layer '{lp.name}'")
                raise ToolError(f"{prototxt}: {said}" if named else f"{where}: {said}") from None
        if len(tops) != len(lp.top):
            raise ToolError(f"{where}: names {len(lp.top)} tops, the layer makes {len(tops)}")
        for t, s in zip(lp.top, tops):
            shapes[t] = tuple(int(d) for d in s)
        out.append(DeployLayer(lp, bottoms, [tuple(int(d) for d in s) for s in tops], blob_shapes))
    return filtered, out


def _read_weights(model: str, layers: list[DeployLayer]) -> dict[str, list[np.ndarray]]:
    """Blobs of `model` by layer name, checked against the prototxt's blob shapes."""
    mp = ncio.read_caffemodel(model)
    stored = {l.name: l for l in mp.layer}
    out: dict[str, list[np.ndarray]] = {}
    for dl in layers:
        if not dl.blob_shapes:
            continue
        sl = stored.get(dl.name)
        if sl is None or len(sl.blobs) == 0:
            raise ToolError(f"{model} stores no blobs for layer '{dl.name}' ({dl.type}); the model does not "
                            "belong to this net")
        if len(sl.blobs) != len(dl.blob_shapes):
            raise ToolError(f"{model}: layer '{dl.name}' ({dl.type}) stores {len(sl.blobs)} blobs, the prototxt "
                            f"gives it {len(dl.blob_shapes)} ({', '.join(fmt_shape(s) for s in dl.blob_shapes)})")
        arrays = []
        for i, (b, want) in enumerate(zip(sl.blobs, dl.blob_shapes)):
            try:
                a = ncio.blob_to_array(b)
            except ValueError as e:
                raise ToolError(f"{model}: layer '{dl.name}' blob {i}: {e}") from None
            if a.size != math.prod(want):
                raise ToolError(f"{model}: layer '{dl.name}' ({dl.type}) blob {i} has shape {fmt_shape(a.shape)}, "
                                f"the prototxt expects {fmt_shape(want)}")
            arrays.append(a.reshape(want))
        out[dl.name] = arrays
    return out


# ----------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------

def adder_tree_bits(base: int, n: int) -> int:
    """Bit-additions of an adder tree over n terms of `base` bits: each level adds floor(len/2)
    pairs one bit wider than the last (the source's `addition_tree`)."""
    count, bits = 0, base
    while n > 1:
        count += (n // 2) * bits
        n = (n + 1) // 2
        bits += 1
    return count


def parse_bits(spec: str | None, defaults: Mapping[str, int], what: str) -> dict[str, int]:
    """``first=32,default=4,last=32`` (keys first, last, default or a layer name) over `defaults`."""
    out = dict(defaults)
    if not spec:
        return out
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            bits = int(value)
        except ValueError:
            bits = -1
        if not sep or not key or not 1 <= bits <= 32:
            raise ToolError(f"{what}: expected KEY=BITS items (KEY first, last, default or a layer name; "
                            f"BITS 1..32), got '{item}'")
        out[key] = bits
    if "default" not in out:
        raise ToolError(f"{what}: no default bit width")
    return out


@dataclasses.dataclass
class LayerScore:
    """What one layer counts."""

    name: str
    type: str
    kind: str            # Conv, Linear, Scale, AvgPool, ReLU, IntQuant or Other (no count)
    shape: Shape         # top shape (batch 1)
    ops: float
    params: float
    a_bits: int | None = None
    w_bits: int | None = None
    nonzero: int | None = None
    count: int | None = None
    rule: str = ""


@dataclasses.dataclass
class ScoreResult:
    """The totals of `micronet_score` and its per-layer counts."""

    prototxt: str
    model: str
    score_type: int
    count: str
    reference: str
    layers: list[LayerScore]
    ops: float
    params: float
    op_score: float
    param_score: float

    @property
    def score(self) -> float:
        return self.op_score + self.param_score

    def by_kind(self) -> dict[str, tuple[float, float]]:
        """(ops, params) summed per layer kind, in order of first appearance."""
        out: dict[str, list[float]] = {}
        for l in self.layers:
            acc = out.setdefault(l.kind, [0.0, 0.0])
            acc[0] += l.ops
            acc[1] += l.params
        return {k: (v[0], v[1]) for k, v in out.items()}


def _bits_for(name: str, index: int, last: int, spec: Mapping[str, int]) -> int:
    if name in spec:
        return spec[name]
    if index == 0 and "first" in spec:
        return spec["first"]
    if index == last and "last" in spec:
        return spec["last"]
    return spec["default"]


def _weight_layer(dl: DeployLayer, w: np.ndarray, a_bits: int, w_bits: int, conv_rule: str,
                  faithful: bool, where: str) -> LayerScore:
    """The source's count_conv_linear_* hooks: the float operations in its order."""
    top = dl.tops[0]
    if dl.type == "Convolution":
        if len(top) != 4:
            raise ToolError(f"{where}: only 2-D convolutions are scored, the top is {fmt_shape(top)}")
        C, H, W = top[1], top[2], top[3]
        kind = "Conv"
    else:
        if len(top) != 2:
            raise ToolError(f"{where}: an InnerProduct top must be 1 x C here, got {fmt_shape(top)}")
        C, H, W = top[1], 1, 1
        kind = "Linear"
        conv_rule = "fp32"  # the source scores nn.Linear with count_conv_linear_FP32 in every type
    rows = w.reshape(C, -1)
    w_element = int(w.size)
    nnz_rows = np.count_nonzero(rows, axis=1)
    w_nonzero = int(nnz_rows.sum())
    params = (w_element + w_nonzero * w_bits) / 32.
    k_element = w_element / C
    density = w_nonzero * 1.0 / w_element
    multiply_ops = density * H * W * C * k_element * max(w_bits, a_bits) / 32.
    if conv_rule == "fp32" or (a_bits == 32 and conv_rule == "tree"):
        addition_ops = density * H * W * C * (k_element - 1) * 32. / 32.
        rule = "fp32"
    elif a_bits == 32:  # fixed rule
        addition_ops = density * H * W * C * (k_element - 1) * 32. / 32.
        if faithful:
            addition_ops /= 32.  # the hook's second division (module docstring)
        rule = "fp32"
    elif conv_rule == "tree":
        base = w_bits + a_bits  # input_signed is False for every layer of the MicroNet net
        addition_ops = 0
        for n in nnz_rows.tolist():
            addition_ops += adder_tree_bits(base, int(n)) * H * W
        addition_ops /= 32.
        rule = "tree"
    else:
        if a_bits < 2:
            raise ToolError(f"{where}: the fixed-width rule needs activations of at least 2 bits, got {a_bits}")
        max_add_val = (2 ** a_bits - 1) * (2 ** (a_bits - 1) - 1) * k_element
        max_bitwidth = math.floor(math.log(max_add_val, 2)) + 1
        addition_ops = 0
        for n in nnz_rows.tolist():
            terms = int(n) - 1 if faithful else max(int(n) - 1, 0)
            addition_ops += max_bitwidth * terms * H * W
        addition_ops /= 32.
        rule = f"fixed {max_bitwidth}b"
    return LayerScore(dl.name, dl.type, kind, top, multiply_ops + addition_ops, params, a_bits, w_bits,
                      w_nonzero, w_element, rule)


def _scale_layer(dl: DeployLayer, blobs: list[np.ndarray], rule: str, faithful: bool, where: str) -> LayerScore:
    if len(dl.bottoms) != 1:
        raise ToolError(f"{where}: a Scale with a second bottom (the scale as an input) has no counting rule")
    x = dl.bottoms[0]
    num_elements = math.prod(x)
    bias = blobs[1] if len(blobs) > 1 else None
    if faithful:
        C = x[0]  # input[0].size(0): the batch (module docstring)
        zero = bias is None or float(bias.reshape(-1)[0]) == 0
    else:
        C = int(blobs[0].size)
        zero = bias is None or not np.any(bias)
    if zero:
        ops, params = num_elements * 1.0 / 2.0, C * 1.0 / 2.0
    elif rule == "fp16":
        ops, params = num_elements * 2.0 / 2.0, C * 2.0 / 2.0
    else:
        ops, params = num_elements / 2.0 + num_elements, C * 2.0 / 2.0
    return LayerScore(dl.name, dl.type, "Scale", dl.tops[0], ops, params,
                      rule=f"{rule}, bias {'0' if zero else 'set'}")


def _pool_layer(dl: DeployLayer, rule: str, faithful: bool, where: str) -> LayerScore:
    pp = dl.param.pooling_param
    if pp.pool != pb.PoolingParameter.AVE:
        raise ToolError(f"{where}: only average pooling has a MicroNet counting rule")
    if pp.global_pooling:
        kh, kw = dl.bottoms[0][2], dl.bottoms[0][3]
    elif pp.HasField("kernel_size"):
        kh = kw = int(pp.kernel_size)
    else:
        kh, kw = int(pp.kernel_h), int(pp.kernel_w)
    if faithful and pp.HasField("kernel_size") and not pp.global_pooling:
        k = kh  # torch.prod of the int kernel_size: k, not k x k
    else:
        k = kh * kw
    num_elements = math.prod(dl.tops[0])
    add_per_output = float(np.float32(k) - np.float32(1))
    if rule == "fp16":
        ops = (add_per_output + 1.) * num_elements / 2.
    else:
        ops = add_per_output * num_elements + num_elements * 1. / 2.
    return LayerScore(dl.name, dl.type, "AvgPool", dl.tops[0], ops, 0.0, rule=f"{rule}, {k} per output")


def micronet_score(prototxt: str, model: str, score_type: int = 0, act_bits: str | Mapping[str, int] | None = None,
                   weight_bits: str | Mapping[str, int] | None = None, input_shape: Sequence[int] | None = None,
                   reference: str = "cifar100", count: str = "faithful") -> ScoreResult:
    """Score the deploy net `prototxt` with the weights of `model` (see the module docstring)."""
    require_files(prototxt, model)
    if score_type not in SCORE_TYPES:
        raise ToolError(f"score type must be 0..6, got {score_type}")
    if reference not in REFERENCES:
        raise ToolError(f"reference must be one of {', '.join(REFERENCES)}, got '{reference}'")
    if count not in ("faithful", "corrected"):
        raise ToolError(f"count must be 'faithful' or 'corrected', got '{count}'")
    # a mapping or a "key=bits,..." string, over the defaults
    a_spec = ({**DEFAULT_ACT_BITS, **act_bits} if isinstance(act_bits, Mapping)
              else parse_bits(act_bits, DEFAULT_ACT_BITS, "--act-bits"))
    w_spec = ({**DEFAULT_WEIGHT_BITS, **weight_bits} if isinstance(weight_bits, Mapping)
              else parse_bits(weight_bits, DEFAULT_WEIGHT_BITS, "--weight-bits"))
    faithful = count == "faithful"
    conv_rule, scale_rule, pool_rule = SCORE_TYPES[score_type]
    _, layers = deploy_layers(prototxt, input_shape)
    for dl in layers:  # the net's structure first, then its weights
        where = f"{prototxt}: layer '{dl.name}' ({dl.type})"
        t = dl.type
        if t in ("Convolution", "InnerProduct"):
            p = dl.param.convolution_param if t == "Convolution" else dl.param.inner_product_param
            if p.bias_term:
                raise ToolError(f"{where} has a bias; the MicroNet counts take bias-free Convolution and "
                                "InnerProduct layers followed by a Scale (as micronet_merge writes them)")
        elif t == "Pooling" and dl.param.pooling_param.pool != pb.PoolingParameter.AVE:
            raise ToolError(f"{where}: only average pooling has a MicroNet counting rule")
        elif t not in ("Scale", "Pooling", "ReLU", "IntQuant") and t not in _FREE_TYPES:
            hint = " (fold it into a Scale first: micronet_merge)" if t == "BatchNorm" else ""
            raise ToolError(f"{where}: no MicroNet counting rule for this type{hint}; rules exist for "
                            f"{', '.join(_SCORED_TYPES)} and the shape-only {', '.join(sorted(_FREE_TYPES))}")
    weights = _read_weights(model, layers)
    weight_names = [dl.name for dl in layers if dl.type in ("Convolution", "InnerProduct")]
    if not weight_names:
        raise ToolError(f"{prototxt}: no Convolution or InnerProduct layer to score")
    for spec, what in ((a_spec, "--act-bits"), (w_spec, "--weight-bits")):
        unknown = [k for k in spec if k not in ("first", "last", "default") and k not in weight_names]
        if unknown:
            raise ToolError(f"{what}: {', '.join(unknown)} is not a Convolution or InnerProduct layer of "
                            f"{prototxt} (they are: {', '.join(weight_names)})")
    out: list[LayerScore] = []
    last = len(weight_names) - 1
    for dl in layers:
        where = f"{prototxt}: layer '{dl.name}' ({dl.type})"
        t = dl.type
        if t in ("Convolution", "InnerProduct"):
            i = weight_names.index(dl.name)
            out.append(_weight_layer(dl, weights[dl.name][0], _bits_for(dl.name, i, last, a_spec),
                                     _bits_for(dl.name, i, last, w_spec), conv_rule, faithful, where))
        elif t == "Scale":
            out.append(_scale_layer(dl, weights[dl.name], scale_rule, faithful, where))
        elif t == "Pooling":
            out.append(_pool_layer(dl, pool_rule, faithful, where))
        elif t == "ReLU":
            out.append(LayerScore(dl.name, t, "ReLU", dl.tops[0], 1 * math.prod(dl.tops[0]) / 2., 0.0))
        elif t == "IntQuant":
            out.append(LayerScore(dl.name, t, "IntQuant", dl.tops[0], 0.0, 0.0))
        else:
            out.append(LayerScore(dl.name, t, "Other", dl.tops[0] if dl.tops else (), 0.0, 0.0))
    total_ops = 0
    total_params = 0
    for l in out:
        total_ops += l.ops
        total_params += l.params
    ref_ops, ref_params = REFERENCES[reference]
    return ScoreResult(prototxt, model, score_type, count, reference, out, total_ops, total_params,
                       total_ops / ref_ops, total_params / ref_params)


def format_score(r: ScoreResult, per_layer: bool = True) -> list[str]:
    """The printed report: per-layer table, per-kind sums, then the source's five lines."""
    conv_rule, scale_rule, pool_rule = SCORE_TYPES[r.score_type]
    ref_ops, ref_params = REFERENCES[r.reference]
    lines = [f"MicroNet score of {r.model} (net {r.prototxt})",
             f"score type {r.score_type}: convolutions {_CONV_RULE_TEXT[conv_rule]}, Scale {scale_rule.upper()}, "
             f"AvgPool {pool_rule.upper()}; count {r.count}; reference {r.reference} "
             f"({ref_ops:g} ops, {ref_params:g} params)"]
    if per_layer:
        rows = [("layer", "type", "top", "a/w bits", "nonzero", "rule", "ops", "params")]
        for l in r.layers:
            bits = f"{l.a_bits}/{l.w_bits}" if l.a_bits is not None else ""
            nz = f"{l.nonzero}/{l.count}" if l.count is not None else ""
            rows.append((l.name, l.type, "x".join(map(str, l.shape)), bits, nz, l.rule, f"{l.ops:.4f}",
                         f"{l.params:.4f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append("  ".join(c.ljust(w) if i < 6 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        lines.append("")
    lines.append("per layer type (ops, params):")
    for kind, (ops, params) in r.by_kind().items():
        lines.append(f"  {kind:<9} {ops!r:>24} {params!r:>16}")
    lines += [f"#OPs: {r.ops!r}", f"#Params: {r.params!r}", f"OP score: {r.op_score!r}",
              f"Param score: {r.param_score!r}", f"Final score: {r.score!r}"]
    return lines


def score_main(argv: Sequence[str] | None = None) -> int:
    """`micronet_score <deploy.prototxt> <weights> [--score-type 0..6] [--act-bits ...] ...`"""
    p = argparse.ArgumentParser(
        prog="netcompress micronet_score",
        description="The MicroNet Challenge score of an integer deploy net (the source's score.py): "
                    "#OPs and #Params in 32-bit equivalents, op/param/final score and a per-layer table.")
    p.add_argument("prototxt", help="the deploy prototxt (Input, Convolution, Scale, IntQuant, Concat, "
                                    "Pooling AVE, ReLU, InnerProduct)")
    p.add_argument("weights", help=".caffemodel with its weights")
    p.add_argument("--score-type", type=int, default=0, choices=sorted(SCORE_TYPES),
                   help="0 adder tree/FP16 (default, the published score), 1 fixed/FP16, 2 FP32, "
                        "3 fixed/FP32, 4 tree/FP32, 5 tree/FP16 with FP32 pooling, 6 fixed/FP16 with FP32 pooling")
    p.add_argument("--act-bits", default=None, metavar="SPEC",
                   help="activation bits: first=32,default=4,last=32 (the default); a layer name may be a key")
    p.add_argument("--weight-bits", default=None, metavar="SPEC",
                   help="weight bits: default=4,last=6 (the default); a layer name may be a key")
    p.add_argument("--input", type=dims_arg("3,32,32"), default=None, metavar="C,H,W",
                   help="input shape (default: the prototxt's Input, batch 1)")
    p.add_argument("--reference", choices=sorted(REFERENCES), default="cifar100")
    p.add_argument("--count", choices=("faithful", "corrected"), default="faithful",
                   help="faithful reproduces the published score (Scale and AvgPool quirks); corrected "
                        "counts channels and k x k")
    p.add_argument("--no-layers", action="store_true", help="leave out the per-layer table")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")

    def run(a: argparse.Namespace) -> int:
        refuse_overwrites([a.json], writes=["the JSON score"], prototxt=a.prototxt, weights=a.weights)
        r = micronet_score(a.prototxt, a.weights, a.score_type, a.act_bits, a.weight_bits, a.input,
                           a.reference, a.count)
        for line in format_score(r, per_layer=not a.no_layers):
            print(line)
        if a.json:
            import json

            doc = {"prototxt": r.prototxt, "model": r.model, "score_type": r.score_type, "count": r.count,
                   "reference": r.reference, "ops": r.ops, "params": r.params, "op_score": r.op_score,
                   "param_score": r.param_score, "score": r.score,
                   "by_type": {k: {"ops": o, "params": q} for k, (o, q) in r.by_kind().items()},
                   "layers": [dataclasses.asdict(l) for l in r.layers]}
            ncio.atomic_write(a.json, json.dumps(doc, indent=2) + "\n")
        return 0
    return run_tool(p, argv, run)


# ----------------------------------------------------------------------------------------------
# import_pth
# ----------------------------------------------------------------------------------------------

_BLOB_OF_LEAF = {"weight": 0, "bias": 1}
_LEAF_OF_BLOB = {0: "weight", 1: "bias"}


def _densenet_final_key(key: str) -> tuple[str, int]:
    """`dense1.0.scale1.weight` -> ('dense1.0_scale1', 0); `conv1.weight` -> ('conv1', 0)."""
    *module, leaf = key.split(".")
    if leaf not in _BLOB_OF_LEAF or not module:
        raise ToolError(f"the map micronet-densenet-final places '<module>.weight' and '<module>.bias' "
                        f"tensors; '{key}' is neither")
    layer = module[0] if len(module) == 1 else ".".join(module[:-1]) + "_" + module[-1]
    return layer, _BLOB_OF_LEAF[leaf]


def _densenet_final_name(layer: str, blob: int) -> str:
    head, sep, tail = layer.rpartition("_")
    module = f"{head}.{tail}" if sep and head else layer
    return f"{module}.{_LEAF_OF_BLOB.get(blob, f'blob{blob}')}"


# map name -> (state-dict key -> (layer, blob index), (layer, blob index) -> the key it expects)
MAPS: dict[str, tuple[Callable[[str], tuple[str, int]], Callable[[str, int], str]]] = {
    "micronet-densenet-final": (_densenet_final_key, _densenet_final_name),
}


def _load_pth(path: str):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ToolError(f"{path}: not a PyTorch file that loads with weights_only=True (no pickled code is "
                        f"run): {first}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return obj


def _as_array(t, where: str) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor):
        raise ToolError(f"{where}: expected a tensor, got {type(t).__name__}")
    return t.detach().to("cpu", torch.float32).numpy()


def import_pth(pth: str, prototxt: str, out: str, mapping: str = "micronet-densenet-final") -> list[str]:
    """Write `out` (.caffemodel) for the deploy `prototxt` from the tensors of `pth`.

    Every blob of every layer must receive exactly one tensor and every tensor must find its blob
    (shapes checked; Scale tensors may be (1, C, 1) for (C)). Returns the lines to print.
    """
    require_files(pth, prototxt)
    refuse_overwrites((out,), writes=("the caffemodel",), state_dict=pth, deploy_prototxt=prototxt)
    if mapping not in MAPS:
        raise ToolError(f"unknown map '{mapping}' (known: {', '.join(MAPS)})")
    key_to_blob, blob_to_key = MAPS[mapping]
    net, layers = deploy_layers(prototxt)
    by_name = {dl.name: dl for dl in layers}
    slots = [(dl.name, i) for dl in layers for i in range(len(dl.blob_shapes))]
    obj = _load_pth(pth)
    assigned: dict[tuple[str, int], tuple[str, np.ndarray]] = {}
    if isinstance(obj, (list, tuple)):
        if len(obj) != len(slots):
            raise ToolError(f"{pth} holds a list of {len(obj)} tensors; the blobs of {prototxt} number {len(slots)}")
        for n, (slot, t) in enumerate(zip(slots, obj)):
            assigned[slot] = (f"[{n}]", _as_array(t, f"{pth}: item {n}"))
    elif isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
        if items and all(k.startswith("module.") for k, _ in items):
            items = [(k[len("module."):], v) for k, v in items]  # saved from nn.DataParallel
        for key, t in items:
            layer, blob = key_to_blob(key)
            dl = by_name.get(layer)
            if dl is None:
                raise ToolError(f"{pth}: '{key}' maps to layer '{layer}', which {prototxt} does not have")
            if blob >= len(dl.blob_shapes):
                raise ToolError(f"{pth}: '{key}' maps to blob {blob} of layer '{layer}' ({dl.type}), which has "
                                f"{len(dl.blob_shapes)} blob(s)" + (" (bias_term: false)" if blob == 1 else ""))
            assigned[(layer, blob)] = (key, _as_array(t, f"{pth}: '{key}'"))
    else:
        raise ToolError(f"{pth} holds a {type(obj).__name__}, not a state dict (names to tensors) or a list of tensors")
    missing = [s for s in slots if s not in assigned]
    if missing:
        names = ", ".join(f"'{blob_to_key(l, b)}' (layer '{l}' blob {b})" for l, b in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ToolError(f"{pth} has no tensor for {names}{more}")
    model = pb.NetParameter()
    model.name = net.name
    lines = []
    for dl in layers:
        lp = model.layer.add()
        lp.CopyFrom(dl.param)
        del lp.blobs[:]
        for i, want in enumerate(dl.blob_shapes):
            key, a = assigned[(dl.name, i)]
            if tuple(a.shape) != tuple(want):
                squeeze = tuple(d for d in a.shape if d != 1) == tuple(d for d in want if d != 1)
                if not (dl.type == "Scale" and squeeze):
                    raise ToolError(f"{pth}: '{key}' has shape {fmt_shape(a.shape)}; layer '{dl.name}' ({dl.type}) "
                                    f"blob {i} is {fmt_shape(want)}")
            ncio.array_to_blob(a.reshape(want), lp.blobs.add())
            lines.append(f"{dl.name} ({dl.type}) blob {i} {fmt_shape(want)} <- {key} {fmt_shape(a.shape)}")
    ncio.write_caffemodel(out, model)
    lines.append(f"Imported {len(assigned)} tensors into {sum(1 for dl in layers if dl.blob_shapes)} layers; "
                 f"wrote {out}")
    return lines


def import_pth_main(argv: Sequence[str] | None = None) -> int:
    """`import_pth <state_dict.pth> <deploy.prototxt> <out.caffemodel> --map micronet-densenet-final`"""
    p = argparse.ArgumentParser(
        prog="netcompress import_pth",
        description="Turn a PyTorch state dict (loaded with weights_only=True) into a caffemodel for a "
                    "deploy prototxt, by a named map of tensor names to layer blobs.")
    p.add_argument("pth", help="the state dict (.pth / .pth.tar; a {'state_dict': ...} wrapper is unwrapped)")
    p.add_argument("prototxt", help="the deploy prototxt whose layers receive the tensors")
    p.add_argument("out", help="the .caffemodel to write")
    p.add_argument("--map", required=True, choices=sorted(MAPS), dest="mapping",
                   help="micronet-densenet-final: the source's densenet_final/densenet_merged names, as "
                        "make_densenet --form deploy writes the layers")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the last line")

    def run(a: argparse.Namespace) -> int:
        lines = import_pth(a.pth, a.prototxt, a.out, a.mapping)
        for line in lines[-1:] if a.quiet else lines:
            print(line)
        return 0
    return run_tool(p, argv, run)
