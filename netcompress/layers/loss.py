"""Loss and evaluation layers: SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss,
InfogainLoss, MultinomialLogisticLoss, HingeLoss, ContrastiveLoss, Accuracy.

Loss layers never backpropagate into their label bottoms (Caffe aborts if asked to); labels are
read with C's truncation toward zero (`static_cast<int>`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, canonical_axis, register_layer, rows

__all__ = ["LossLayer", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "InfogainLoss",
           "MultinomialLogisticLoss", "HingeLoss", "ContrastiveLoss", "Accuracy", "loss_normalizer",
           "normalization_mode"]

FLT_MIN = float(torch.finfo(torch.float32).tiny)
_NLL_CAP = -math.log(FLT_MIN)  # Caffe computes -log(max(p, FLT_MIN)): the loss caps at 87.3365
K_LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD (loss_layer.hpp)


def normalization_mode(lp: pb.LossParameter, default: int | None = None) -> int:
    """The normalization a Caffe loss layer uses: an explicit `normalization` wins; otherwise the
    deprecated `normalize` (true: VALID, false: BATCH_SIZE); otherwise `default` (the layer's own,
    e.g. BATCH_SIZE for SigmoidCrossEntropyLoss) or the proto default VALID."""
    if lp.HasField("normalization"):
        return lp.normalization
    if lp.HasField("normalize"):
        return pb.LossParameter.VALID if lp.normalize else pb.LossParameter.BATCH_SIZE
    return lp.normalization if default is None else default


def loss_normalizer(lp: pb.LossParameter | int, outer: int, inner: int, valid: torch.Tensor | int):
    """Caffe's LossLayer::GetNormalizer (at least 1), for a LossParameter or a resolved mode."""
    mode = normalization_mode(lp) if isinstance(lp, pb.LossParameter) else lp
    if mode == pb.LossParameter.FULL:
        n = outer * inner
    elif mode == pb.LossParameter.VALID:
        n = valid
    elif mode == pb.LossParameter.BATCH_SIZE:
        n = outer
    else:
        n = 1
    if isinstance(n, torch.Tensor):
        return n.clamp_min(1)
    return max(1, n)


class LossLayer(Layer):
    is_loss = True
    auto_top = True
    min_tops, max_tops = 1, 1
    # Set by `device_label_check`: a device flag, true once a label was out of range (None until it runs).
    label_fault: torch.Tensor | None = None
    _label_classes = 0

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 1  # Caffe's LossLayer: the labels get no forced diff

    def checked_labels(self, lab: torch.Tensor, n: int, valid: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels that index `n` predictions, checked: (labels, None) on the CPU, where `check_label_range`
        raises at once (its host read costs nothing); elsewhere `device_label_check`. Add the second value to
        the loss with `with_label_check`."""
        if _host_check(lab):
            check_label_range(self, lab, n, valid)
            return lab, None
        return self.device_label_check(lab, n, valid)

    @staticmethod
    def with_label_check(loss: torch.Tensor, poison: torch.Tensor | None) -> torch.Tensor:
        """`loss`, NaN where `checked_labels` found a label out of range off the CPU."""
        return loss if poison is None else loss + poison.to(loss.dtype)

    def device_label_check(self, lab: torch.Tensor, n: int, valid: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """`check_label_range` without a host read, for labels off the CPU: there a read would synchronize the
        device at every iteration, and cannot be captured in a CUDA graph (solvers/step.py). Returns the labels
        clamped into [0, n), safe to index with, and a 0-d tensor to add to the loss: 0, or NaN when a label
        (not ignore_label) is out of range. The NaN stops training at the solver's finite-loss check, whose
        message then names this layer (`non_finite_cause`); `label_fault` keeps the fact on the device."""
        bad = (lab < 0) | (lab >= n)
        if valid is not None:
            bad &= valid
        any_bad = bad.any()
        if self.label_fault is None or self.label_fault.device != lab.device:
            self.label_fault = torch.zeros((), dtype=torch.bool, device=lab.device)
        self.label_fault.logical_or_(any_bad)
        self._label_classes = n
        poison = torch.zeros((), device=lab.device).masked_fill_(any_bad, math.nan)
        return lab.clamp(0, n - 1), poison

    def non_finite_cause(self) -> str | None:
        if self.label_fault is None or not bool(self.label_fault):
            return None
        ignore = " and not ignore_label" if getattr(self, "ignore_label", None) is not None else ""
        return (f"Layer '{self.name}' (type {self.type_name}) got a label outside [0, {self._label_classes}) (the "
                f"predictions' classes){ignore}: the data's labels do not fit the net.")

    def check_batch(self, bottom_shapes: Sequence[Shape]) -> None:
        """Caffe's LossLayer::Reshape check: data and label share their first dimension."""
        a, b = bottom_shapes[0], bottom_shapes[1]
        if not len(a) or not len(b):  # (Caffe's shape(0) of a blob of no axes: a failed check)
            raise self.error(f"the data and label need a first (batch) axis, got shapes {list(a)} and {list(b)}")
        if a[0] != b[0]:
            raise self.error(f"the data and label should have the same first dimension, got "
                             f"{list(a)} and {list(b)}")

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [()] + [tuple(bottom_shapes[0])] * (len(self.layer_param.top) - 1)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """Softmax over `softmax_param.axis`, then multinomial logistic loss.

    Caffe's loss per sample is -log(max(p, FLT_MIN)); the gradient is p - onehot even where the
    loss is capped, which the straight-through cap below reproduces. An optional second top
    returns the probabilities (no gradient flows back from it, as in Caffe). Normalization:
    `loss_param.normalization` (default VALID), or the deprecated `normalize`.
    """

    @classmethod
    def factory_children(cls, param: pb.LayerParameter) -> int:
        return 1  # its Softmax

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 2
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(param.softmax_param.axis, len(shape), self, "softmax axis")
        self.outer = math.prod(shape[:self.axis])
        self.inner = math.prod(shape[self.axis + 1:])
        label_count = math.prod(self.bottom_shapes[1])
        if label_count != self.outer * self.inner:
            raise self.error(f"the label count ({label_count}) must equal the prediction count "
                             f"outer*inner = {self.outer}*{self.inner}; with shape {list(shape)} and "
                             f"softmax axis {self.axis}, labels must have shape (N, H, W)")
        self.check_batch(self.bottom_shapes)
        lp = param.loss_param
        self.loss_param = lp
        self.ignore_label = int(lp.ignore_label) if lp.HasField("ignore_label") else None

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        C = x.shape[self.axis]
        logp = torch.log_softmax(x, dim=self.axis)
        logp3 = logp.reshape(self.outer, C, self.inner)
        lab = label.detach().reshape(self.outer, 1, self.inner).long()
        valid = None
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
        lab, poison = self.checked_labels(lab, C, valid)
        if valid is not None:
            lab = torch.where(valid, lab, torch.zeros_like(lab))
        nll = -logp3.gather(1, lab).squeeze(1)
        nll = nll + (nll.clamp_max(_NLL_CAP) - nll).detach()
        if valid is not None:
            v = valid.squeeze(1)
            nll = torch.where(v, nll, torch.zeros_like(nll))
            count = v.sum()
        else:
            count = self.outer * self.inner
        norm = loss_normalizer(self.loss_param, self.outer, self.inner, count)
        loss = self.with_label_check(nll.sum() / norm, poison)
        if len(self.layer_param.top) == 2:
            # Caffe's backward ignores the diff of the probability top: detached.
            return loss, torch.softmax(x.detach(), dim=self.axis)
        return loss


def _labels(label: torch.Tensor) -> torch.Tensor:
    """Labels as Caffe reads them: static_cast<int>, i.e. truncation toward zero; no gradient."""
    return label.detach().long()


def _host_check(lab: torch.Tensor) -> bool:
    """Whether a loss checks its labels with a host read (check_label_range): on the CPU, where the read costs
    nothing; elsewhere LossLayer.device_label_check."""
    return lab.device.type == "cpu"


def check_label_range(layer: Layer, lab: torch.Tensor, n: int, valid: torch.Tensor | None = None) -> None:
    """Labels index the `n` predictions: Caffe only DCHECKs it (a release build reads past the
    blob); here a label outside [0, n) that is not ignore_label is an error naming the layer."""
    if lab.device.type == "meta" or lab.numel() == 0:
        return
    bad = (lab < 0) | (lab >= n)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        v = int(lab[bad].reshape(-1)[0])
        if v == -2 ** 63:  # what a cast to an integer makes of NaN and of values past 64 bits
            v = f"{v} (a NaN or infinite label, or one past 64 bits, cast to an integer)"
        raise layer.error(f"label {v} is out of range: labels must lie in [0, {n}) (the predictions' "
                          f"{n} classes){' or equal ignore_label' if valid is not None else ''}")


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of sigmoid(x) against targets in [0, 1], in Caffe's stable form

        loss_i = -(x_i * (t_i - [x_i >= 0]) - log(1 + exp(x_i - 2 x_i [x_i >= 0])))

    summed over non-ignored entries (`loss_param.ignore_label` compares the truncated target)
    and divided by the normalizer. In BVLC Caffe 2017-08 this layer's default normalization is
    BATCH_SIZE (bottom[0].shape[0]), not the proto's VALID: an explicit `normalization` wins,
    then the deprecated `normalize`. The gradient, sigmoid(x) - t (0 where ignored), is the true
    derivative; each branch is evaluated only on its own side so nothing overflows.
    """

    min_bottoms = max_bottoms = 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        a, b = self.bottom_shapes
        self.check_batch(self.bottom_shapes)
        if math.prod(a) != math.prod(b):
            raise self.error(f"the inputs must have the same count, got shapes {list(a)} "
                             f"({math.prod(a)}) and {list(b)} ({math.prod(b)})")
        lp = param.loss_param
        self.mode = normalization_mode(lp, pb.LossParameter.BATCH_SIZE)
        self.ignore_label = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.outer = a[0] if len(a) else 1
        self.inner = math.prod(a[1:])

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.detach().reshape(x.shape).to(x.dtype)
        pos = x >= 0
        xp = torch.where(pos, x, torch.zeros_like(x))
        xn = torch.where(pos, torch.zeros_like(x), x)
        # x >= 0: x(t - 1) - log(1 + exp(-x));  x < 0: x t - log(1 + exp(x)).
        per = torch.where(pos, xp * (t - 1) - torch.log1p(torch.exp(-xp)),
                          xn * t - torch.log1p(torch.exp(xn)))
        if self.ignore_label is not None:
            valid = _labels(target).reshape(x.shape) != self.ignore_label
            per = torch.where(valid, per, torch.zeros_like(per))
            count = valid.sum()
        else:
            count = x.numel()
        norm = loss_normalizer(self.mode, self.outer, self.inner, count)
        return -per.sum() / norm


@register_layer("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / N / 2 with N = bottom[0].shape[0]. Both bottoms receive gradients
    (+-(a - b) / N), as in Caffe."""

    graph_safe = True  # audited: device work only (Layer.graph_safe)
    min_bottoms = max_bottoms = 2

    def allow_force_backward(self, bottom: int) -> bool:
        return True  # both bottoms are predictions

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        a, b = self.bottom_shapes
        self.check_batch(self.bottom_shapes)
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise self.error(f"the inputs must have the same dimension per sample, got shapes "
                             f"{list(a)} and {list(b)}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b.reshape(a.shape)
        return (diff * diff).sum() / a.shape[0] / 2


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-sum_n log(max(p[n, label_n], 1e-20)) / N over probabilities p (N, C, 1, 1 or N, C).

    Caffe's gradient is -1 / (N * max(p, 1e-20)) at the label, also where the clamp is active;
    a straight-through clamp reproduces that."""

    min_bottoms = max_bottoms = 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        a, b = self.bottom_shapes
        self.check_batch(self.bottom_shapes)
        if math.prod(b[1:]) != 1:
            raise self.error(f"the label must hold one value per sample (N, 1, 1, 1), got shape {list(b)}")

    def forward(self, p: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        N = p.shape[0]
        p2 = rows(p, N)
        lab = _labels(label).reshape(N, 1)
        lab, poison = self.checked_labels(lab, p2.shape[1])
        prob = p2.gather(1, lab).squeeze(1)
        clamped = prob + (prob.clamp_min(K_LOG_THRESHOLD) - prob).detach()
        return self.with_label_check(-torch.log(clamped).sum() / N, poison)


@register_layer("InfogainLoss")
class InfogainLoss(LossLayer):
    """Softmax over `infogain_loss_param.axis`, then -sum_l H[label, l] * log(max(p_l, 1e-20))
    per (non-ignored) sample, divided by the normalizer (`loss_param.normalization`, default
    VALID; the deprecated `normalize` is refused, as in Caffe). H (C x C) is read from
    `infogain_loss_param.source` (a binaryproto) or given as a third bottom. Caffe's gradient,
    p * rowsum(H)[label] - H[label, :], ignores the 1e-20 clamp; a straight-through clamp
    reproduces that. An optional second top returns the probabilities (no gradient back)."""

    @classmethod
    def factory_children(cls, param: pb.LayerParameter) -> int:
        return 1  # its Softmax

    min_bottoms, max_bottoms = 2, 3
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.infogain_loss_param
        lp = param.loss_param
        shape = self.bottom_shapes[0]
        self.check_batch(self.bottom_shapes)
        if lp.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.mode = lp.normalization
        self.ignore_label = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.axis = canonical_axis(ip.axis, len(shape), self, "infogain_loss_param.axis")
        self.outer = math.prod(shape[:self.axis])
        self.inner = math.prod(shape[self.axis + 1:])
        self.num_labels = shape[self.axis]
        if math.prod(self.bottom_shapes[1]) != self.outer * self.inner:
            raise self.error(f"the label count ({math.prod(self.bottom_shapes[1])}) must equal the "
                             f"prediction count outer*inner = {self.outer}*{self.inner}")
        C2 = self.num_labels * self.num_labels
        if len(self.bottom_shapes) == 3:
            if math.prod(self.bottom_shapes[2]) != C2:
                raise self.error(f"the infogain matrix (bottom 2) must hold {self.num_labels}x"
                                 f"{self.num_labels} values, got shape {list(self.bottom_shapes[2])}")
            self.H = None
        else:
            if not ip.source:
                raise self.error("infogain_loss_param.source (the infogain matrix file) must be "
                                 "specified when there is no third bottom")
            from ..io import read_binaryproto_array
            H = read_binaryproto_array(ip.source)
            if H.size != C2:
                raise self.error(f"the infogain matrix in {ip.source} must hold {self.num_labels}x"
                                 f"{self.num_labels} values, got shape {list(H.shape)}")
            # A constant, not a Caffe blob: kept out of the state dict.
            self.H = torch.as_tensor(H.reshape(self.num_labels, self.num_labels), dtype=ctx.dtype)

    def forward(self, x: torch.Tensor, label: torch.Tensor, H: torch.Tensor | None = None):
        C = self.num_labels
        if H is None:
            H = self.H.to(device=x.device, dtype=x.dtype)
        H = H.detach().reshape(C, C)
        logp = torch.log_softmax(x, dim=self.axis)
        logp3 = logp.reshape(self.outer, C, self.inner)
        logp3 = logp3 + (logp3.clamp_min(math.log(K_LOG_THRESHOLD)) - logp3).detach()
        lab = _labels(label).reshape(self.outer, self.inner)
        valid = None
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
        lab, poison = self.checked_labels(lab, C, valid)
        if valid is not None:
            lab = torch.where(valid, lab, torch.zeros_like(lab))
        rows = H[lab]                                  # (outer, inner, C)
        per = (rows.permute(0, 2, 1) * logp3).sum(dim=1)  # (outer, inner)
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
            count = valid.sum()
        else:
            count = self.outer * self.inner
        loss = self.with_label_check(-per.sum() / loss_normalizer(self.mode, self.outer, self.inner, count), poison)
        if len(self.layer_param.top) == 2:
            return loss, torch.softmax(x.detach(), dim=self.axis)
        return loss


@register_layer("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge loss: with s = +1 for the label's class and -1 elsewhere,
    sum(max(0, 1 - s x)) / N (L1, default) or sum(max(0, 1 - s x)^2) / N (L2). The gradient at
    the hinge (margin exactly met) is 0, as Caffe's sign()."""

    min_bottoms = max_bottoms = 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        self.check_batch(self.bottom_shapes)
        label = self.bottom_shapes[1]
        if math.prod(label[1:]) != 1:  # (Caffe reads the first N values of a larger label blob)
            raise self.error(f"the label must hold one value per sample (N, 1, 1, 1), got shape {list(label)}")
        self.norm = param.hinge_loss_param.norm
        if self.norm not in (pb.HingeLossParameter.L1, pb.HingeLossParameter.L2):
            raise self.error(f"unknown hinge_loss_param.norm {self.norm}")

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        x2 = rows(x, N)
        lab = _labels(label).reshape(N, 1)
        lab, poison = self.checked_labels(lab, x2.shape[1])
        sign = torch.ones_like(x2).scatter_(1, lab, -1.0)
        margin = torch.relu(1 + x2 * sign)
        if self.norm == pb.HingeLossParameter.L1:
            return self.with_label_check(margin.sum() / N, poison)
        return self.with_label_check((margin * margin).sum() / N, poison)


@register_layer("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Contrastive loss on pairs (a, b) with a similarity label y (bottom 2), d = ||a - b||:
    sum(y d^2 + (1 - y) max(margin - d, 0)^2) / N / 2, or with legacy_version
    max(margin - d^2, 0) for dissimilar pairs. Caffe's gradient for a dissimilar pair (non-legacy)
    is -(margin - d) / (d + 1e-4) * (a - b) / N, not the true derivative (which divides by d);
    it is reproduced with a straight-through surrogate. b gets the negated gradient; y none."""

    min_bottoms = max_bottoms = 3

    def allow_force_backward(self, bottom: int) -> bool:
        return bottom != 2  # the similarity labels

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        cp = param.contrastive_loss_param
        self.margin = float(cp.margin)
        self.legacy = bool(cp.legacy_version)
        a, b, y = self.bottom_shapes
        if a != b or math.prod(a[2:]) != 1:
            raise self.error(f"bottoms 0 and 1 must have the same shape (N, C, 1, 1), got {list(a)} "
                             f"and {list(b)}")
        if math.prod(y[1:]) != 1 or (len(y) and len(a) and y[0] != a[0]):
            raise self.error(f"bottom 2 (the similarity) must hold one value per pair (N, 1, 1, 1), "
                             f"got shape {list(y)}")

    def forward(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        N = a.shape[0]
        diff = rows(a - b, N)
        dist_sq = (diff * diff).sum(dim=1)
        similar = _labels(y).reshape(N) != 0
        if self.legacy:
            dissim = torch.relu(self.margin - dist_sq)
            per = torch.where(similar, dist_sq, dissim)
            return per.sum() / N / 2
        dist = torch.sqrt(dist_sq.detach())
        mdist = self.margin - dist
        value = torch.where(similar, dist_sq.detach(), torch.clamp_min(mdist, 0.0) ** 2)
        # Caffe's gradient wrt a is c * (a - b) / N per pair; 0.5 * c * d^2 (c held constant)
        # has exactly that derivative, and adds nothing to the value.
        coef = torch.where(similar, torch.ones_like(dist),
                           torch.where(mdist > 0, -mdist / (dist + 1e-4), torch.zeros_like(dist)))
        surrogate = 0.5 * (coef * dist_sq).sum()
        return (value.sum() / 2 + (surrogate - surrogate.detach())) / N


@register_layer("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy exactly as Caffe counts it. Caffe (2017-08, CPU only) partially sorts
    (score, class) pairs with std::greater, so among equal scores the larger class index ranks
    first: a sample is right when fewer than k classes rank above the true class, counting every
    strictly higher score and every equal score of a larger class index. Optional second top:
    the per-class accuracy (0 for classes with no sample)."""

    min_bottoms = max_bottoms = 2
    min_tops, max_tops = 1, 2

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        ap = param.accuracy_param
        shape = self.bottom_shapes[0]
        self.top_k = int(ap.top_k)
        self.axis = canonical_axis(ap.axis, len(shape), self)
        self.num_labels = shape[self.axis]
        if self.top_k > self.num_labels:
            raise self.error(f"top_k ({self.top_k}) must be at most the number of classes "
                             f"({self.num_labels})")
        self.outer = math.prod(shape[:self.axis])
        self.inner = math.prod(shape[self.axis + 1:])
        label_count = math.prod(self.bottom_shapes[1])
        if label_count != self.outer * self.inner:
            raise self.error(f"the label count ({label_count}) must equal outer*inner = "
                             f"{self.outer}*{self.inner}")
        self.ignore_label = int(ap.ignore_label) if ap.HasField("ignore_label") else None

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        x3 = x.detach().reshape(self.outer, self.num_labels, self.inner)
        lab = label.detach().reshape(self.outer, 1, self.inner).long()
        valid = torch.ones_like(lab, dtype=torch.bool)
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        if bool(((safe < 0) | (safe >= self.num_labels)).any()):
            raise self.error(f"labels must lie in [0, {self.num_labels}), got "
                             f"{int(safe.min())}..{int(safe.max())}")
        true_score = x3.gather(1, safe)
        classes = torch.arange(self.num_labels, device=x.device).reshape(1, -1, 1)
        ahead = (x3 > true_score) | ((x3 == true_score) & (classes > safe))
        better = ahead.sum(dim=1, keepdim=True)
        correct = (better < self.top_k) & valid
        count = valid.sum()
        acc = correct.sum().to(x.dtype) / count.clamp_min(1).to(x.dtype)
        if len(self.layer_param.top) == 1:
            return acc
        onehot = torch.zeros(self.outer, self.num_labels, self.inner, dtype=x.dtype, device=x.device)
        per_total = onehot.scatter_add(1, safe, valid.to(x.dtype)).sum(dim=(0, 2))
        per_right = torch.zeros_like(onehot).scatter_add(1, safe, correct.to(x.dtype)).sum(dim=(0, 2))
        per_class = torch.where(per_total > 0, per_right / per_total.clamp_min(1), torch.zeros_like(per_total))
        return acc, per_class

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        shapes: list[Shape] = [()]
        if len(self.layer_param.top) == 2:
            shapes.append((self.num_labels,))
        return shapes
