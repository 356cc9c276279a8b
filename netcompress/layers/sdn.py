"""Shallow-Deep Network layers (recipes-spec 2.2, 2.3, 5.2): `MixedPooling`, the pooling of an
internal classifier, and `SDNLoss`, the weighted sum of the classifiers' cross-entropies with its
epoch ramp.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import NetDefinitionError
from ..fillers import fill
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer
from .loss import LossLayer, SoftmaxWithLoss
from .vision import Pooling

__all__ = ["MixedPooling", "SDNLoss", "SDN_MAX_COEFF", "sdn_max_coefficients", "sdn_coefficients"]

log = get_logger("layers")

# SDN's tau^max (Kaya et al., `aux_funcs.py`): the maximum weight of the i-th internal classifier.
SDN_MAX_COEFF = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)


# ----------------------------------------------------------------------------------------------
# MixedPooling
# ----------------------------------------------------------------------------------------------

class _PoolingPart(Pooling):
    """One of MixedPooling's two Caffe poolings; errors name the MixedPooling layer."""

    type_name = "MixedPooling"


@register_layer("MixedPooling")
class MixedPooling(Layer):
    """`y = alpha * MaxPool(x) + (1 - alpha) * AvgPool(x)` on (N, C, H, W) (SDN's IC head).

    Geometry (`mixed_pooling_param`: kernel_size or kernel_h/kernel_w, stride or
    stride_h/stride_w, pad) and numerics are those of Caffe's MAX and AVE `Pooling` (output size
    rounded up, AVE divisor counting the padding). Blob `[alpha]` has shape (1,) and is learnable;
    `alpha_filler` defaults to uniform [0, 1] (SDN's `torch.rand(1)`), drawn from the net's Caffe
    stream like every filler. alpha is not clamped to [0, 1] (SDN does not clamp it either), so
    dL/dalpha = sum((max - avg) * dy) is the plain derivative autograd gives.
    """

    min_bottoms = max_bottoms = 1
    min_tops = max_tops = 1

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        mp = param.mixed_pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        pool = pb.PoolingParameter()
        if mp.HasField("kernel_size"):
            if mp.HasField("kernel_h") or mp.HasField("kernel_w"):
                raise self.error("mixed_pooling_param: the kernel is kernel_size OR kernel_h and "
                                 "kernel_w, not both")
            pool.kernel_size = mp.kernel_size
        elif mp.HasField("kernel_h") and mp.HasField("kernel_w"):
            pool.kernel_h, pool.kernel_w = mp.kernel_h, mp.kernel_w
        else:
            raise self.error("mixed_pooling_param needs kernel_size, or both kernel_h and kernel_w")
        if mp.HasField("stride_h") or mp.HasField("stride_w"):
            if mp.HasField("stride") or not (mp.HasField("stride_h") and mp.HasField("stride_w")):
                raise self.error("mixed_pooling_param: the stride is stride OR both stride_h and stride_w")
            pool.stride_h, pool.stride_w = mp.stride_h, mp.stride_w
        else:
            pool.stride = mp.stride
        pool.pad = mp.pad
        parts = []
        for method in (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE):
            lp = pb.LayerParameter(name=param.name, type="Pooling", bottom=list(param.bottom)[:1],
                                   top=list(param.top)[:1])
            lp.pooling_param.CopyFrom(pool)
            lp.pooling_param.pool = method
            parts.append(_PoolingPart(lp, self.bottom_shapes, ctx))
        # A tuple, not submodules: the parts hold no blobs, and the state dict stays [alpha].
        self._parts: tuple[Pooling, Pooling] = (parts[0], parts[1])
        filler = mp.alpha_filler if mp.HasField("alpha_filler") else \
            pb.FillerParameter(type="uniform", min=0.0, max=1.0)
        self.add_blob("alpha", fill(self.new_empty(1), filler, ctx.generator, f"layer '{self.name}': "))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx = self._parts[0](x)
        av = self._parts[1](x)
        a = self.alpha
        return a * mx + (1 - a) * av

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return self._parts[0].top_shapes(bottom_shapes)


# ----------------------------------------------------------------------------------------------
# SDNLoss
# ----------------------------------------------------------------------------------------------

def _decimal(v: float) -> float:
    """A float proto field as the decimal the prototxt wrote (0.01, not float32's 0.0099999998):
    the seeds compute their coefficients in double precision from such decimals."""
    return float(str(np.float32(v)))


def sdn_max_coefficients(policy: int, n_outputs: int, max_coeff: Sequence[float] = ()) -> list[float]:
    """The maximum weights of the first n-1 outputs (the last output always weighs 1).

    SDN: `max_coeff` (default SDN_MAX_COEFF), its first n-1 values. INRIA (`sdn_loss` of
    inria-internship, 2.3.3): `max_i = 0.01 + i/n` for i = 1..n-1, e.g. n = 4 gives
    [0.26, 0.51, 0.76].
    """
    k = n_outputs - 1
    if policy == pb.SDNLossParameter.INRIA:
        return [0.01 + i / n_outputs for i in range(1, n_outputs)]
    values = list(max_coeff) if len(max_coeff) else list(SDN_MAX_COEFF)
    if len(values) < k:
        raise ValueError(f"{k} internal classifiers need {k} max_coeff values, got {len(values)}")
    return [_decimal(v) for v in values[:k]]


def sdn_coefficients(max_coeff: Sequence[float], epoch: int, ramp_epochs: int, start: float = 0.01) -> list[float]:
    """`c_i = min(max_i, start + e * max_i / E)` for the 1-based epoch e (SDN and INRIA alike)."""
    return [min(m, start + epoch * m / ramp_epochs) for m in max_coeff]


@register_layer("SDNLoss")
class SDNLoss(LossLayer):
    """`L = sum_{i<n} c_i * CE(out_i, label) + CE(out_n, label)` over bottoms out_1..out_n, label.

    CE is Caffe's SoftmaxWithLoss on each output (softmax over `softmax_param.axis`, the
    `loss_param` normalization, VALID by default, and ignore_label), so with one output the layer
    is exactly SoftmaxWithLoss. The coefficients follow `sdn_loss_param`:

    - policy SDN: max_i = `max_coeff` (default 0.15, 0.3, ..., 0.9; one per internal classifier);
      policy INRIA: max_i = 0.01 + i/n, from this layer's number of outputs n;
    - c_i = min(max_i, start + e * max_i / ramp_epochs), e = floor(iteration / epoch_iters) + 1.

    The iteration comes from `set_iteration` (the solver calls it on the TRAIN net before every
    iteration). The epoch length is `sdn_loss_param.epoch_iters` when positive, otherwise the
    attribute `epoch_iters`, which the solver sets from its own `epoch_iters` on every SDNLoss
    layer of a net it builds (including the nets rebuilt at each growth stage). A TRAIN forward
    with neither is an error; a TEST net without an epoch length uses epoch 1 (the loss it reports
    is for display only; the per-output Accuracy layers are what to read).

    `coefficient_override` (None by default) replaces every c_i with one value while it is set:
    SNIP scoring in a `snip_schedule` uses the loss with coefficients 1 (INRIA, spec 5.3.2).
    """

    min_bottoms = 2
    max_bottoms = None

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        sp = param.sdn_loss_param
        self.n_outputs = len(self.bottom_shapes) - 1
        self.policy = int(sp.policy)
        if self.policy == pb.SDNLossParameter.INRIA and len(sp.max_coeff):
            raise self.error("sdn_loss_param.max_coeff is for policy SDN; policy INRIA derives the "
                             "maximum weights from the number of outputs (0.01 + i/n)")
        try:
            self.max_coeff = sdn_max_coefficients(self.policy, self.n_outputs, sp.max_coeff)
        except ValueError as e:
            raise self.error(f"sdn_loss_param.max_coeff: {e} (bottoms: {self.n_outputs} outputs and the "
                             "label)") from None
        self.start = _decimal(sp.start)
        self.ramp_epochs = int(sp.ramp_epochs)
        if self.ramp_epochs <= 0:
            raise self.error(f"sdn_loss_param.ramp_epochs must be positive, got {self.ramp_epochs}")
        if sp.epoch_iters < 0:
            raise self.error(f"sdn_loss_param.epoch_iters must be >= 0 (0: the solver's), got {sp.epoch_iters}")
        self.param_epoch_iters = int(sp.epoch_iters)
        # Set by the solver (its SolverParameter.epoch_iters); read only when the param's is 0.
        self.epoch_iters: int | None = None
        self.coefficient_override: float | None = None
        self.iteration = 0
        self._logged_epoch: int | None = None
        label_shape = self.bottom_shapes[-1]
        names = list(param.bottom)
        ces = []
        for i, shape in enumerate(self.bottom_shapes[:-1]):
            lp = pb.LayerParameter(name=param.name, type="SoftmaxWithLoss", top=list(param.top)[:1],
                                   bottom=[names[i], names[-1]] if len(names) == len(self.bottom_shapes)
                                   else [])
            lp.loss_param.CopyFrom(param.loss_param)
            lp.softmax_param.CopyFrom(param.softmax_param)
            try:
                ces.append(_CrossEntropy(lp, [shape, label_shape], ctx))
            except NetDefinitionError as e:
                where = f"'{names[i]}'" if lp.bottom else f"{i}"
                raise NetDefinitionError(f"{e} (output bottom {where})") from None
        # A tuple, not submodules: the cross-entropies hold no blobs.
        self._ce: tuple[SoftmaxWithLoss, ...] = tuple(ces)

    # -- the schedule ------------------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        self.iteration = int(iteration)
        if self.phase == pb.TRAIN and self.n_outputs > 1 and self.epoch_length() is not None:
            e = self.epoch()
            if e != self._logged_epoch:
                self._logged_epoch = e
                log.info("SDNLoss %s: epoch %d, coefficients %s", self.name, e,
                         ", ".join("%.6g" % c for c in self.coefficients()))

    def epoch_length(self) -> int | None:
        """Iterations per epoch: `sdn_loss_param.epoch_iters` if positive, else the solver's."""
        if self.param_epoch_iters > 0:
            return self.param_epoch_iters
        if self.epoch_iters is not None and int(self.epoch_iters) > 0:
            return int(self.epoch_iters)
        if self.ctx.epoch_iters > 0:  # the solver's (LayerContext.epoch_iters)
            return int(self.ctx.epoch_iters)
        return None

    def epoch(self) -> int:
        """The 1-based epoch of the current iteration, floor(iteration / epoch_iters) + 1."""
        n = self.epoch_length()
        if n is None:
            if self.phase == pb.TRAIN and self.n_outputs > 1:
                raise self.error("needs the epoch length to ramp its coefficients: set "
                                 "sdn_loss_param.epoch_iters, or the solver's epoch_iters (the solver "
                                 "passes it to the layer as its `epoch_iters` attribute)")
            return 1
        return self.iteration // n + 1

    def coefficients(self) -> list[float]:
        """c_1..c_{n-1} at the current iteration (the last output's weight is 1)."""
        if self.n_outputs == 1:
            return []
        if self.coefficient_override is not None:
            return [float(self.coefficient_override)] * (self.n_outputs - 1)
        return sdn_coefficients(self.max_coeff, self.epoch(), self.ramp_epochs, self.start)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        *outs, label = bottoms
        loss = self._ce[-1](outs[-1], label)
        for c, ce, out in zip(self.coefficients(), self._ce, outs):
            loss = loss + c * ce(out, label)
        return loss


class _CrossEntropy(SoftmaxWithLoss):
    """SDNLoss's per-output SoftmaxWithLoss; errors name the SDNLoss layer."""

    type_name = "SDNLoss"

