"""MicroNet's quantization layers (recipes-spec §4.5, §4.6, §5.2): ActQuant, QuantConvolution,
QuantInnerProduct and IntQuant.

ActQuant (`act_quant_param`), blobs `[alpha, calib_min]`, both (1,) buffers stored in the caffemodel.
  y = α·clamp(round(x/α), lb, ub) with the range of §4.5 (`ops.act_quant_range`): [0, 2^b − 1] for a
  non-negative calibration minimum, the signed range below 0 (`signed` forces either). Gradient: the STE
  dy/dx = [lb <= round(x/α) <= ub]; α gets none.
  Calibration (`calibrate`): FIRST_TRAIN_BATCH records calib_min = min(x) and α = max|x|/ub over the first TRAIN
  batch, whose input passes through unchanged (the source's calibration pass: downstream layers see float
  activations); α is then frozen. Unlike the source, that batch also trains (the source ran a separate no-update
  pass over it). The layer counts as calibrated when α > 0, so a caffemodel with a calibrated α (a snapshot, the
  previous MicroNet step) is never recalibrated, and a batch of zeros leaves calibration to the next batch.
  Until calibrated, TEST forwards pass x through. NONE: α must come from the weights (an uncalibrated forward is
  an error). SCRIPT: only `request_calibration()` (a script's calibration pass) calibrates; until then x passes
  through. In data-parallel training each rank sees its own share of the first batch: the TRAIN calibration
  all-reduces max|x| and min(x) over the ranks, so all of them get the α of the global batch, and α and
  calib_min are `replicated_state()`, which the snapshot check compares across ranks. This is the one state change made inside a forward (like BatchNorm's statistics): it needs the batch.
  `refine_iters` > 0 is refused: the source never ran its least-squares refinement (Q11) and §4.5 describes it
  too loosely to reproduce.

QuantConvolution / QuantInnerProduct (`weight_quant_param` plus `convolution_param` / `inner_product_param`),
blobs `[W, (b), W_mask, (b_mask), w_alpha]`: the DNS mask layout followed by the (C_out,) scales, a buffer.
  The masks' fillers are read from `dns_convolution_param` / `dns_inner_product_param`, as the Masked* layers do
  (only `weight_mask_filler` and `bias_mask_filler` are used); without that message the masks start all ones
  (keep everything), not the proto's constant-0 default, which would zero the layer.
  Forward: Wq = α_c·clamp(round(v/α_c), −2^(b−1), 2^(b−1) − 1) per output channel c, v = W⊙M (§4.6), and the bias
  b⊙m. Backward: dW = dWq (unmasked straight-through; the bottom diff uses Wq), db = d(b⊙m); gradients from
  several backward calls (iter_size) add up unmasked, as dW = dWq says (the Masked/DNS layers mask the earlier
  ones instead). An all-zero row gets α = 0 and Wq = 0 (Q13).
  α is fitted by `ops.quant_weight_fit` (ALS, `als_iters` steps) before a TRAIN forward according to `refit`:
  EPOCH_START at the first TRAIN forward of iterations 0, E, 2E, ... (E = `epoch_iters`), EVERY_ITER before every
  TRAIN forward, ONCE before the first TRAIN forward of a run (a resumed run does not refit). The epoch length E
  comes from the solver through `set_epoch_iters(E)` (the `epoch_iters` attribute); without it EPOCH_START refits
  at iteration 0 only, with a warning. α is also fitted when the layer is built and whenever weights without
  `w_alpha` are loaded (a normal or masked caffemodel), so a TEST net or deploy net never computes with stale
  scales; a caffemodel holding `w_alpha` keeps it.

IntQuant (`int_quant_param`): y = clamp(round_half_even(x), low, high), no blobs; backward is the STE.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import ops
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer
from .masked import MaskedLayer
from .vision import Convolution, InnerProduct

log = get_logger("layers")

__all__ = ["ActQuant", "IntQuant", "QuantLayer", "QuantConvolution", "QuantInnerProduct"]

_MAX_BITS = 16


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (None where torch keeps none, e.g. inference tensors)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _all_reduce_max(t: torch.Tensor) -> None:
    """Element-wise MAX of `t` over the processes of the default torch.distributed group (in place); nothing
    without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


@register_layer("ActQuant")
class ActQuant(Layer):
    """Activation quantizer with calibration at the first TRAIN batch (see the module docstring)."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.act_quant_param
        self.bitwidth = int(ap.bitwidth)
        self.calibrate_mode: str = pb.ActQuantParameter.Calibrate.Name(ap.calibrate)
        self.sign: str = pb.ActQuantParameter.Sign.Name(ap.signed)
        low_bits = 1 if self.sign == "UNSIGNED" else 2
        if not low_bits <= self.bitwidth <= _MAX_BITS:
            raise self.error(f"act_quant_param.bitwidth must be in [{low_bits}, {_MAX_BITS}] with signed: "
                             f"{self.sign}, got {self.bitwidth}")
        if ap.refine_iters > 0:
            raise self.error(f"act_quant_param.refine_iters: {ap.refine_iters} is not supported; only 0 (the "
                             "source's behaviour, recipes-spec Q11): its least-squares refinement never ran and is "
                             "not specified precisely enough to reproduce")
        self.add_blob("alpha", torch.zeros(1), learnable=False)
        self.add_blob("calib_min", torch.zeros(1), learnable=False)
        self._calibrate_next = False
        self._key: tuple | None = None
        self._status: tuple[bool, int, int] = (False, 0, 0)

    # -- state -----------------------------------------------------------------------------
    def quant_range(self) -> tuple[int, int]:
        """(lb, ub) for the stored calibration minimum (§4.5)."""
        return ops.act_quant_range(self.bitwidth, float(self.calib_min.reshape(-1)[0]), self.sign)

    def status(self) -> tuple[bool, int, int]:
        """(calibrated, lb, ub), read back from the buffers only when they changed (a shared TEST net sees a
        calibration done by the TRAIN net; a loaded caffemodel is picked up), so a calibrated layer's forward
        makes no host sync."""
        a, mn = self.alpha, self.calib_min
        key = (id(a), _version(a), id(mn), _version(mn))
        if key != self._key or None in key:
            alpha = float(a.reshape(-1)[0])
            self._status = (alpha > 0.0, *self.quant_range())
            self._key = key
        return self._status

    @property
    def calibrated(self) -> bool:
        return self.status()[0]

    def request_calibration(self) -> None:
        """Make the next forward (any phase) calibrate from its batch and pass it through (a script's
        calibration pass; `calibrate: SCRIPT`)."""
        self._calibrate_next = True

    def calibrate(self, x: torch.Tensor) -> None:
        """calib_min = min(x), α = max|x|/ub with ub from that minimum (§4.5), in x's dtype.

        In a data-parallel run the TRAIN nets of all processes calibrate at the same forward, each on its own
        share of the batch; their max|x| and min(x) are combined (all-reduce MAX), so every rank gets the α of
        the whole global batch, as the source's single process did, and the ranks stay identical (the
        snapshot check compares α through `replicated_state`)."""
        with torch.no_grad():
            x = x.detach()
            if x.numel():
                stats = torch.stack([x.abs().amax(), -x.amin()])
            else:
                stats = torch.full((2,), float("-inf"), dtype=x.dtype, device=x.device)
            if self.phase == pb.TRAIN and self.ctx.world_size > 1:
                _all_reduce_max(stats)
            if not bool(torch.isfinite(stats).all()):
                return  # no values anywhere: calibrate at the next batch
            mx, mn = stats[0], -stats[1]
            _, ub = ops.act_quant_range(self.bitwidth, float(mn), self.sign)
            self.calib_min.copy_(mn.reshape(1))
            self.alpha.copy_((mx / ub).reshape(1))
        _, lb, ub = self.status()
        log.info("[%s] ActQuant calibrated: alpha %g, min %g, range [%d, %d]", self.name, float(self.alpha[0]),
                 float(self.calib_min[0]), lb, ub)

    def replicated_state(self) -> dict[str, torch.Tensor | None]:
        # Calibrated on each rank's first batch: the all-reduce in `calibrate` makes them equal; a snapshot
        # fails loudly, naming the layer, should they ever differ.
        return {"alpha": self.alpha, "calib_min": self.calib_min}

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calibrated, lb, ub = self.status()
        auto = self.calibrate_mode == "FIRST_TRAIN_BATCH" and self.phase == pb.TRAIN and not calibrated
        if self._calibrate_next or auto:
            self._calibrate_next = False
            self.calibrate(x)
            return x
        if not calibrated:
            if self.calibrate_mode == "NONE":
                raise self.error("alpha is 0 (not calibrated) and act_quant_param.calibrate is NONE: load weights "
                                 "holding a calibrated alpha, or use calibrate: FIRST_TRAIN_BATCH")
            return x
        return ops.act_quant(x, self.alpha, lb, ub)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


@register_layer("IntQuant")
class IntQuant(Layer):
    """y = clamp(round_half_even(x), low, high) (§5.2): the integer deploy net's Quant."""

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.int_quant_param
        self.low, self.high = float(ip.low), float(ip.high)
        if not self.low <= self.high:
            raise self.error(f"int_quant_param.low must not exceed high, got {self.low:g} and {self.high:g}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int_quant(x, self.low, self.high)

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]


_MAX_ALS_ITERS = 100_000


class QuantLayer(MaskedLayer):
    """Per-output-channel weight quantization on top of Convolution or InnerProduct (see the module docstring)."""

    graph_safe = False  # not audited for CUDA-graph capture (Layer.graph_safe)
    mask_kind = "quant"      # [W, (b), W_mask, (b_mask), w_alpha]
    masked_forward = True    # (its own: Wq from W⊙M, below)
    freeze_masked = False

    def _init_quant(self) -> None:
        wq = self.layer_param.weight_quant_param
        self.bitwidth = int(wq.bitwidth)
        if not 2 <= self.bitwidth <= _MAX_BITS:
            raise self.error(f"weight_quant_param.bitwidth must be in [2, {_MAX_BITS}], got {self.bitwidth}")
        self.per_channel = bool(wq.per_channel)
        self.als_iters = int(wq.als_iters)
        if self.als_iters > _MAX_ALS_ITERS:
            raise self.error(f"weight_quant_param.als_iters must be at most {_MAX_ALS_ITERS:,} (the fit reaches its "
                             f"fixed point in tens of steps), got {self.als_iters:,}")
        self.refit: str = pb.WeightQuantParameter.Refit.Name(wq.refit)
        self.low, self.high = ops.weight_quant_range(self.bitwidth)
        self._add_masks()
        if not self.layer_param.HasField(self.param_field):
            with torch.no_grad():
                self.weight_mask.fill_(1)
                if self.bias_term:
                    self.bias_mask.fill_(1)
        self.add_blob("w_alpha", torch.zeros(self.num_output), learnable=False)
        self.epoch_iters: int | None = None  # set by the solver (solver epoch_iters) through set_epoch_iters
        self.fitted = False                  # a TRAIN refit happened in this run (refit ONCE)
        self._fit_iter: int | None = None    # the iteration of the last EPOCH_START refit
        self._warned = False
        self.fit_alpha()

    def set_epoch_iters(self, epoch_iters: int) -> None:
        """The epoch length in iterations, for `refit: EPOCH_START` (0 or less: unknown)."""
        self.epoch_iters = int(epoch_iters) if epoch_iters > 0 else None

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        # One output channel per row: InnerProduct with `transpose` stores W as [K, N].
        return t.t() if getattr(self, "transpose", False) else t

    def fit_alpha(self) -> None:
        """Fit w_alpha to the current W⊙M (§4.6 ALS)."""
        with torch.no_grad():
            alpha = ops.quant_weight_fit(self._rows(self.weight.detach()), self._rows(self.weight_mask),
                                         self.bitwidth, self.als_iters, self.per_channel)
            self.w_alpha.copy_(alpha)

    def blobs_loaded(self, n_loaded: int) -> None:
        super().blobs_loaded(n_loaded)  # the masks' check
        # Weights without w_alpha (a normal or masked model): scales for the loaded weights.
        if n_loaded < len(self.blob_names):
            self.fit_alpha()

    def before_train_forward(self) -> None:
        it = self.iteration
        if self.refit == "EVERY_ITER":
            due = True
        elif self.refit == "ONCE":
            due = not self.fitted
        else:
            if not (self.epoch_iters or self.ctx.epoch_iters) and it != 0 and not self._warned:
                log.warning("[%s] refit EPOCH_START without the epoch length (solver epoch_iters): w_alpha was "
                            "refitted at iteration 0 only", self.name)
                self._warned = True
            epoch_iters = self.epoch_iters or self.ctx.epoch_iters
            due = (it % epoch_iters == 0) if epoch_iters else it == 0
            due = due and self._fit_iter != it
        if due:
            self.fit_alpha()
            self.fitted = True
            self._fit_iter = it

    def before_backward(self) -> None:
        # dW = dWq: gradients of several backward calls add up unmasked (MaskedLayer would mask the earlier ones).
        pass

    def after_backward(self) -> None:
        pass

    # -- forward ---------------------------------------------------------------------------
    def effective_weight(self) -> torch.Tensor:
        wq = ops.quant_weight(self._rows(self.weight), self._rows(self.weight_mask), self.w_alpha, self.low,
                              self.high)
        return self._rows(wq)

    def effective_bias(self) -> torch.Tensor | None:
        # b⊙m with the gradient unmasked, as the Masked/DNS layers.
        return ops.dns_masked_weight(self.bias, self.bias_mask) if self.bias_term else None

    # -- snapshots -------------------------------------------------------------------------
    def snapshot_state(self):
        return {"fitted": self.fitted}

    def restore_state(self, state) -> None:
        # A resumed run computes with the snapshot's w_alpha: refit ONCE does not fit again.
        self.fitted = True if state is None else bool(state.get("fitted", True))


@register_layer("QuantConvolution")
class QuantConvolution(QuantLayer, Convolution):
    """Convolution with per-output-channel quantized weights (weight_quant_param; masks as dns_convolution_param)."""

    param_field = "dns_convolution_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        Convolution.__init__(self, param, bottom_shapes, ctx)
        self._init_quant()


@register_layer("QuantInnerProduct")
class QuantInnerProduct(QuantLayer, InnerProduct):
    """InnerProduct with per-output quantized weights (weight_quant_param; masks as dns_inner_product_param)."""

    param_field = "dns_inner_product_param"

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._init_quant()
