"""Loss and evaluation layers: SoftmaxWithLoss, Accuracy."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..proto import caffe_pb2 as pb
from .base import Layer, LayerContext, Shape, register_layer
from .vision import canonical_axis

__all__ = ["LossLayer", "SoftmaxWithLoss", "Accuracy", "loss_normalizer"]

FLT_MIN = float(torch.finfo(torch.float32).tiny)
_NLL_CAP = -math.log(FLT_MIN)  # Caffe computes -log(max(p, FLT_MIN)): the loss caps at 87.3365


def loss_normalizer(lp: pb.LossParameter, outer: int, inner: int, valid: torch.Tensor | int):
    """Caffe's LossLayer::GetNormalizer (at least 1). `normalize` (deprecated) wins when set."""
    mode = lp.normalization
    if lp.HasField("normalize"):
        mode = pb.LossParameter.VALID if lp.normalize else pb.LossParameter.BATCH_SIZE
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

    def top_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [()] + [tuple(bottom_shapes[0])] * (len(self.layer_param.top) - 1)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """Softmax over `softmax_param.axis`, then multinomial logistic loss.

    Caffe's loss per sample is -log(max(p, FLT_MIN)); the gradient is p - onehot even where the
    loss is capped, which the straight-through cap below reproduces. An optional second top
    returns the probabilities.
    """

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
        lp = param.loss_param
        self.loss_param = lp
        self.ignore_label = int(lp.ignore_label) if lp.HasField("ignore_label") else None

    def forward(self, x: torch.Tensor, label: torch.Tensor):
        C = x.shape[self.axis]
        logp = torch.log_softmax(x, dim=self.axis)
        logp3 = logp.reshape(self.outer, C, self.inner)
        lab = label.reshape(self.outer, 1, self.inner).long()
        valid = None
        if self.ignore_label is not None:
            valid = lab != self.ignore_label
            lab = torch.where(valid, lab, torch.zeros_like(lab))
        nll = -logp3.gather(1, lab).squeeze(1)
        nll = nll + (nll.clamp_max(_NLL_CAP) - nll).detach()
        if valid is not None:
            v = valid.squeeze(1)
            nll = nll * v
            count = v.sum()
        else:
            count = self.outer * self.inner
        norm = loss_normalizer(self.loss_param, self.outer, self.inner, count)
        loss = nll.sum() / norm
        if len(self.layer_param.top) == 2:
            return loss, logp.exp()
        return loss


@register_layer("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy exactly as Caffe counts it: a sample is right when fewer than k classes
    score strictly higher than the true class (ties count as right). Optional second top: the
    per-class accuracy."""

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
        better = (x3 > true_score).sum(dim=1, keepdim=True)
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
