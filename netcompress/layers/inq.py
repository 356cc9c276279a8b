"""Incremental Network Quantization layers (reference-semantics §3): INQConvolution, INQInnerProduct,
and the INQ stage algorithm they run.

At the first TRAIN forward of iteration 0 the layer quantizes the largest portion of its
unquantized (mask 1) weights and biases to powers of two and sets their masks to 0; the solver then
freezes those entries (zero update and history, every solver: Decision 5). The forward uses W and b
as stored. The blob layout and the per-call gradient rule are those of every masked layer
(layers/masked.py).

The stage algorithm (ComputeQuantumRange, ShapeIntoTwoPower's counts) is here, with the layers
that run it; its element-wise passes are the fused ops of `netcompress.ops.inq`.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Sequence

import torch

from .. import ops
from ..errors import NetcompressError
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import LayerContext, Shape, register_layer
from .masked import MaskedLayer
from .vision import Convolution, InnerProduct

log = get_logger("layers")

__all__ = ["INQLayer", "INQConvolution", "INQInnerProduct", "INQRangeError", "INQStep", "round_half_away",
           "inq_partition_counts", "inq_exponent_range", "inq_quantize_portion_"]


# ---------------------------------------------------------------------------------------------------
# The stage algorithm (§3.2-§3.5)
# ---------------------------------------------------------------------------------------------------

class INQRangeError(NetcompressError):
    """The reference's fatal CHECKs of ComputeQuantumRange (§3.3): the model cannot be quantized further."""


@dataclasses.dataclass(frozen=True)
class INQStep:
    """What one `inq_quantize_portion_` call did, with the numbers the reference logs (§3.4.7)."""

    n1: int                 # Max_power (−100: everything was already pruned)
    n2: int                 # Min_power = n1 − N + 1
    count: int              # entries in the blob
    n_yet: int              # mask == 1 entries before the step
    n_init: int = 0
    n_keep: int = 0
    n_update: int = 0       # nYet − nKeep, as logged; ties at the threshold may quantize more
    skipped: str = ""       # why nothing was done ("portion", "pruned", "done"), or ""


_F32 = struct.Struct("<f")


def _f32(x: float) -> float:
    """x rounded to float32 and widened back to float64, like the reference's (double)(float) casts."""
    return _F32.unpack(_F32.pack(x))[0]


def round_half_away(x: float) -> int:
    """C `round`: halves go away from zero (Python's `round` goes to even)."""
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # exact for doubles: a − floor(a) is representable
        r += 1
    return int(math.copysign(r, x))


def inq_partition_counts(n_yet: int, p0: float, p1: float) -> tuple[int, int, int]:
    """(n_init, n_keep, n_update) of ShapeIntoTwoPower (§3.4 steps 4-6), bit for bit.

    p0, p1: previous and target accumulated portions, rounded to float32 first (the prototxt stores them as
    float). n_init = round((double)(float)n_yet / (1 − p0)), n_keep = round(n_init·(1 − p1)), with C's
    round-half-away; n_update = n_yet − n_keep. The cases the reference leaves undefined raise ValueError.
    """
    p0f, p1f = _f32(p0), _f32(p1)
    if p0f >= 1.0:
        raise ValueError(f"inq_partition_counts: portion[0] must be < 1, got {p0}")
    n_init = round_half_away(_f32(float(n_yet)) / (1.0 - p0f))
    n_keep = round_half_away(n_init * (1.0 - p1f))
    if n_keep < 0:
        raise ValueError(f"inq_partition_counts: portion[1] must be <= 1, got {p1} (n_keep = {n_keep})")
    return n_init, n_keep, n_yet - n_keep



_FLT_EPSILON = 2.0 ** -23


def _log2_floor(x: float) -> int:
    return math.floor(math.log(4.0 * x / 3.0) / math.log(2.0))


def _require_finite(stats: list[float]) -> None:
    """An infinite |w| has no power of two (the reference's int cast of log2(inf) is undefined)."""
    if math.isinf(stats[0]) or math.isinf(stats[1]):
        where = "an unquantized" if math.isinf(stats[0]) else "a quantized"
        raise INQRangeError(f"{where} entry is infinite (a diverged model?); expected finite values")


def _exponent_range(stats: list[float], num_quantum_values: int) -> tuple[int, int]:
    # Mirrors ComputeQuantumRange: a maximum of −1 is the reference's "still INT_MIN" (no entry seen).
    _require_finite(stats)
    max_t, max_q, n_q = stats[0], stats[1], stats[3]
    if max_q >= 0.0 and abs(max_q) <= _FLT_EPSILON:
        # (a) pruned entries, all ~0, nothing quantized yet: a DNS-pruned model at its first INQ stage.
        if max_t < 0.0:
            n1 = -100  # the reference's "all pruned" sentinel
        elif max_t > _FLT_EPSILON:
            n1 = _log2_floor(max_t)
        else:
            raise INQRangeError(f"inq_exponent_range: case (a), pruned model: the largest unquantized |w| is "
                                f"{max_t:g}, expected > FLT_EPSILON ({_FLT_EPSILON:g})")
    elif max_q < 0.0:
        # (b) no mask-0 entries: a fresh model.
        if n_q != 0:
            raise INQRangeError(f"inq_exponent_range: case (b), fresh model: {int(n_q)} mask-0 entries are all "
                                "NaN, expected none")
        if not max_t > _FLT_EPSILON:
            raise INQRangeError("inq_exponent_range: case (b), fresh model: expected a mask-1 entry with "
                                f"|w| > FLT_EPSILON ({_FLT_EPSILON:g}), got "
                                + (f"max |w| = {max_t:g}" if max_t >= 0.0 else "none"))
        n1 = _log2_floor(max_t)
    else:
        # (c) some entries are already quantized: n1 is the largest power present.
        if not max_t > _FLT_EPSILON:
            raise INQRangeError("inq_exponent_range: case (c), partly quantized model: expected an "
                                f"unquantized entry with |w| > FLT_EPSILON ({_FLT_EPSILON:g}), got "
                                + (f"max |w| = {max_t:g}" if max_t >= 0.0 else "none left"))
        t_exp = _log2_floor(max_t)
        n1 = round_half_away(math.log(max_q) / math.log(2.0))
        if n1 < t_exp:
            raise INQRangeError(f"inq_exponent_range: case (c), hard situation: an unquantized weight "
                                f"({max_t:g}, exponent {t_exp}) has grown past the largest quantized power "
                                f"2^{n1}; expected exponent <= {n1}")
    return n1, n1 - num_quantum_values + 1


def inq_exponent_range(weight: torch.Tensor, mask: torch.Tensor, num_quantum_values: int) -> tuple[int, int]:
    """(n1, n2) of ComputeQuantumRange (§3.3): powers 2^n2 … 2^n1, n2 = n1 − num_quantum_values + 1.

    Case (a), DNS-pruned model (mask-0 entries all |w| <= FLT_EPSILON): n1 = floor(log(4·max_t/3)/log 2)
    over mask == 1, or the sentinel −100 when every entry is pruned. Case (b), fresh model (no mask-0
    entries): the same formula. Case (c), partly quantized: n1 = round(log2(max_q)), which must be at
    least the unquantized maximum's exponent. The reference's fatal CHECKs raise INQRangeError naming the
    case. Reads a 5-number summary back to the host (one sync).
    """
    stats = ops.inq_mask_stats(weight, mask).tolist()
    return _exponent_range(stats, num_quantum_values)



def inq_quantize_portion_(weight: torch.Tensor, mask: torch.Tensor, portion: tuple[float, float],
                          num_quantum_values: int) -> INQStep:
    """One blob's quantization stage, in place: ComputeQuantumRange then ShapeIntoTwoPower (§3.2-§3.5).

    portion: (previous, target) accumulated portions of the layer's `inq_convolution_param.portion`.
    Skips when portion[1] == 0 or when everything is pruned (n1 == −100). Otherwise quantizes the
    largest-|v| mask-1 entries so that about portion[1] of the initially unquantized entries are done.
    """
    stats = ops.inq_mask_stats(weight, mask).tolist()
    _require_finite(stats)
    count, n_yet = weight.numel(), int(stats[2])
    p0, p1 = portion
    if n_yet == 0 and stats[1] > _FLT_EPSILON:
        # Every entry is quantized (or pruned) already: nothing to do. The reference's
        # ComputeQuantumRange aborts here (case (c) CHECK); netcompress skips (README: deviations).
        n1 = round_half_away(math.log(stats[1]) / math.log(2.0))
        return INQStep(n1, n1 - num_quantum_values + 1, count, 0, skipped="done")
    n1, n2 = _exponent_range(stats, num_quantum_values)  # runs (and checks) even when the step is skipped
    if _f32(p1) == 0.0:
        return INQStep(n1, n2, count, n_yet, skipped="portion")
    if n1 == -100:
        return INQStep(n1, n2, count, n_yet, skipped="pruned")
    n_init, n_keep, n_update = inq_partition_counts(n_yet, p0, p1)
    if n_update > 0:
        ops.inq_quantize_(weight, mask, ops.inq_threshold(weight, mask, n_keep), n2)
    return INQStep(n1, n2, count, n_yet, n_init, n_keep, n_update)


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------

class INQLayer(MaskedLayer):
    """Incremental Network Quantization on top of Convolution or InnerProduct."""

    mask_kind = "inq"
    masked_forward = False
    freeze_masked = True
    normal_converter = "inq_to_normal"

    def _init_inq(self) -> None:
        ip = getattr(self.layer_param, self.param_field)
        if len(ip.portion) < 2:
            raise self.error(f"{self.param_field}.portion needs two values, the previous and the target "
                             f"accumulated portion (e.g. portion: 0.3 portion: 0.6), got {len(ip.portion)}")
        self.portion = (float(ip.portion[0]), float(ip.portion[1]))
        if not all(math.isfinite(v) for v in self.portion):
            raise self.error(f"{self.param_field}.portion must be finite numbers, got {self.portion[0]:g}, "
                             f"{self.portion[1]:g}")
        if self.portion[0] > self.portion[1]:
            raise self.error(f"portion[0] ({self.portion[0]:g}) must not exceed portion[1] "
                             f"({self.portion[1]:g})")
        if not 0.0 <= self.portion[0] < 1.0 or self.portion[1] > 1.0:
            raise self.error(f"portions must satisfy 0 <= portion[0] < 1 and portion[1] <= 1, got "
                             f"{self.portion[0]:g}, {self.portion[1]:g}")
        self.num_quantum_values = int(ip.num_quantum_values)
        if self.num_quantum_values < 1:
            raise self.error(f"num_quantum_values must be positive, got {self.num_quantum_values}")
        self._add_masks()
        self.quantized = False
        if self.phase == pb.TRAIN:
            log.info("Found INQ layer:%s, type: %s", self.name, self.type_name)

    def before_train_forward(self) -> None:
        if self.iteration == 0 and not self.quantized:
            self.quantize()

    def quantize(self) -> None:
        """One INQ stage on the weights, then (independently) the biases, with the reference's logs."""
        blobs = [("weight", self.weight, self.weight_mask)]
        if self.bias_term:
            blobs.append(("bias", self.bias, self.bias_mask))
        for what, v, m in blobs:
            try:
                step = inq_quantize_portion_(v.data, m, self.portion, self.num_quantum_values)
            except INQRangeError as e:
                raise self.error(f"cannot quantize the {what} ({e})") from None
            tag = f"[{self.name} {what}]"
            log.info("%s Max_power = %d", tag, step.n1)
            log.info("%s Min_power = %d", tag, step.n2)
            if step.skipped == "portion":
                log.info("%s Current portion equals 0.0%%, skipping ...", tag)
                continue
            if step.skipped == "pruned":
                log.info("%s All parameters already pruned away, skipping ...", tag)
                continue
            if step.skipped == "done":
                log.info("%s Nothing left to quantize (every entry is quantized or pruned), skipping ...", tag)
                continue
            c = step.count
            log.info("%s portions: %g%% -> %g%% (total: %g%% -> %g%%)", tag, 100 * _f32(self.portion[0]),
                     100 * _f32(self.portion[1]), 100.0 * (c - step.n_yet) / c, 100.0 * (c - step.n_keep) / c)
            log.info("%s init_not_quantized/total: %d/%d", tag, step.n_init, c)
            log.info("%s to_update/not_tobe_quantized/not_yet_quantized: %d/%d/%d", tag, step.n_update,
                     step.n_keep, step.n_yet)
        self.quantized = True

    def snapshot_state(self):
        return {"quantized": self.quantized}

    def restore_state(self, state) -> None:
        # A resumed stage never quantizes again (it only happens at iteration 0).
        self.quantized = True if state is None else bool(state.get("quantized", True))


@register_layer("INQConvolution")
class INQConvolution(INQLayer, Convolution):
    """Convolution with INQ masks (inq_convolution_param)."""

    param_field = "inq_convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        Convolution.__init__(self, param, bottom_shapes, ctx)
        self._init_inq()


@register_layer("INQInnerProduct")
class INQInnerProduct(INQLayer, InnerProduct):
    """InnerProduct with INQ masks (inq_inner_product_param)."""

    param_field = "inq_inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._init_inq()
