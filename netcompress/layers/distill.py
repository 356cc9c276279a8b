"""Knowledge distillation: the `KnowledgeDistillationLoss` layer (alias `KDLoss`, recipes-spec 5.2)
and the check that a teacher sub-net is frozen.

The teacher lives in the same prototxt as the student (its layers prefixed `t_`, see
`netcompress rename_layers`) or is read from pre-computed logits (an `HDF5Data` layer, see
`netcompress dump_logits`). The loss layer never sends a gradient to the teacher.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ..solvers.callbacks import TrainingCallback, register_callback
from .base import LayerContext, Shape, canonical_axis, register_layer
from .loss import _NLL_CAP, LossLayer, loss_normalizer, normalization_mode

if TYPE_CHECKING:
    from ..net import Net

log = get_logger("distill")

__all__ = ["KnowledgeDistillationLoss", "KD_MODES", "teacher_layers", "check_teachers"]

KD_MODES = {v.number: v.name for v in pb.KDParameter.Mode.DESCRIPTOR.values}


@register_layer("KnowledgeDistillationLoss", "KDLoss")
class KnowledgeDistillationLoss(LossLayer):
    """Distillation loss of student logits s (bottom 0) towards teacher logits t (bottom 1), with
    an optional label bottom (bottom 2) for the hard term and `ignore_label`.

    Shapes: s and t (N, K) or (N, K, H, W, ...), the classes on `softmax_param.axis` (default 1);
    the label holds one value per (sample, position) as for SoftmaxWithLoss. Top: the scalar loss.

    Per (sample, position), with p = softmax(z / T), log p = log_softmax(z / T) (never the log of
    a probability, Q17) and T = `kd_param.temperature`:

    - `HINTON` (default), `KL`: Σ_k p_t (log p_t − log p_s) = KL(teacher ‖ student);
    - `SOFT_CE`: −Σ_k p_t log p_s;
    - `KL_REVERSE`: Σ_k p_s (log p_s − log p_t) = KL(student ‖ teacher);
    - `LOGIT_MSE`: (1/K) Σ_k (s_k − t_k)² on the raw logits (T is not used).

    The loss is `soft_weight · c · term + hard_weight · CE(s, label)` summed over the non-ignored
    (sample, position) pairs and divided by `loss_param`'s normalizer (default VALID, as
    SoftmaxWithLoss; so the mean over the N samples of a 2-D bottom). c = T² when `scale_by_t2`
    (default true) for the softmax modes, else 1: with it the soft gradient
    soft_weight·T·(p_s − p_t)/N keeps its size as T changes (Hinton et al.). HINTON and KL compute
    the same divergence; HINTON names the usual Hinton recipe (T > 1 plus a hard term). The hard
    term is SoftmaxWithLoss's cross-entropy at T = 1 (with Caffe's FLT_MIN cap) and needs the
    label bottom. `kd_param.ignore_label` (or `loss_param.ignore_label`) drops a position from
    both terms and from the VALID count, as in SoftmaxWithLoss; for an unlabelled transfer set
    leave the label bottom out instead.

    MicroNet's loss names (seed 004, `name:direction`, T = 1, no hard term) map to the modes:
    `kldiv:1` → `KL_REVERSE` (the published recipe), `kldiv:0` → `KL`, `ce:0` → `SOFT_CE`. Their
    `kl:1` (Train.md) was never a valid name (Q18). The proto enum cannot hold those spellings.

    Gradient: to the student only. The teacher bottom is detached here, so nothing reaches the
    layers that produce it; they should still have `lr_mult: 0` (see `check_teachers`), and a
    teacher BatchNorm with `use_global_stats: false` keeps updating its statistics in TRAIN
    (MicroNet's train-mode teacher, Q16). Pure PyTorch: CPU and CUDA run the same code.
    """

    min_bottoms, max_bottoms = 2, 3

    def __init__(self, param: pb.LayerParameter, bottom_shapes: Sequence[Shape], ctx: LayerContext):
        super().__init__(param, bottom_shapes, ctx)
        kp = param.kd_param
        self.mode = int(kp.mode)
        if self.mode not in KD_MODES:
            raise self.error(f"unknown kd_param.mode {self.mode} (known: {', '.join(KD_MODES.values())})")
        self.temperature = float(kp.temperature)
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise self.error(f"kd_param.temperature must be positive, got {self.temperature}")
        self.soft_weight = float(kp.soft_weight)
        self.hard_weight = float(kp.hard_weight)
        softmax_mode = self.mode != pb.KDParameter.LOGIT_MSE
        self.soft_scale = self.temperature ** 2 if (kp.scale_by_t2 and softmax_mode) else 1.0
        s_shape, t_shape = self.bottom_shapes[0], self.bottom_shapes[1]
        names = list(param.bottom) + [""] * 3
        if s_shape != t_shape:
            raise self.error(f"the student logits (bottom 0 '{names[0]}') and the teacher logits "
                             f"(bottom 1 '{names[1]}') must have the same shape, got {list(s_shape)} "
                             f"and {list(t_shape)}")
        self.axis = canonical_axis(param.softmax_param.axis, len(s_shape), self, "softmax axis")
        self.outer = math.prod(s_shape[:self.axis])
        self.inner = math.prod(s_shape[self.axis + 1:])
        lp = param.loss_param
        self.norm_mode = normalization_mode(lp)
        if kp.HasField("ignore_label"):
            self.ignore_label: int | None = int(kp.ignore_label)
        elif lp.HasField("ignore_label"):
            self.ignore_label = int(lp.ignore_label)
        else:
            self.ignore_label = None
        self.has_label = len(self.bottom_shapes) == 3
        if not self.has_label:
            if self.hard_weight != 0:
                raise self.error(f"kd_param.hard_weight is {self.hard_weight:g}: the hard term needs "
                                 "the label as bottom 2")
            if self.ignore_label is not None:
                raise self.error(f"ignore_label {self.ignore_label} needs the label as bottom 2")
        else:
            self.check_batch([s_shape, self.bottom_shapes[2]])
            count = math.prod(self.bottom_shapes[2])
            if count != self.outer * self.inner:
                raise self.error(f"the label count ({count}) must equal the prediction count "
                                 f"outer*inner = {self.outer}*{self.inner} (student shape "
                                 f"{list(s_shape)}, softmax axis {self.axis})")

    @property
    def mode_name(self) -> str:
        return KD_MODES[self.mode]

    def forward(self, s: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        t = t.detach()  # the teacher is a target: no gradient to bottom 1
        K = s.shape[self.axis]
        s3 = s.reshape(self.outer, K, self.inner)
        t3 = t.reshape(self.outer, K, self.inner).to(s.dtype)
        if self.mode == pb.KDParameter.LOGIT_MSE:
            d = s3 - t3
            per = (d * d).mean(dim=1)
        else:
            inv_t = 1.0 / self.temperature
            ls = torch.log_softmax(s3 * inv_t, dim=1)
            lt = torch.log_softmax(t3 * inv_t, dim=1)
            if self.mode == pb.KDParameter.SOFT_CE:
                per = -(lt.exp() * ls).sum(dim=1)
            elif self.mode == pb.KDParameter.KL_REVERSE:
                per = (ls.exp() * (ls - lt)).sum(dim=1)
            else:  # HINTON, KL
                per = (lt.exp() * (lt - ls)).sum(dim=1)
        per = per * (self.soft_weight * self.soft_scale)   # (outer, inner)
        valid, poison = None, None
        if label is not None:
            lab = label.detach().reshape(self.outer, 1, self.inner).long()
            if self.ignore_label is not None:
                valid = lab.squeeze(1) != self.ignore_label
            if self.hard_weight != 0:
                lab, poison = self.checked_labels(lab, s3.shape[1], None if valid is None else valid.unsqueeze(1))
            if valid is not None:
                lab = torch.where(valid.unsqueeze(1), lab, torch.zeros_like(lab))
            if self.hard_weight != 0:
                nll = -torch.log_softmax(s3, dim=1).gather(1, lab).squeeze(1)
                nll = nll + (nll.clamp_max(_NLL_CAP) - nll).detach()  # as SoftmaxWithLoss
                per = per + self.hard_weight * nll
        if valid is not None:
            per = torch.where(valid, per, torch.zeros_like(per))
            count = valid.sum()
        else:
            count = self.outer * self.inner
        return self.with_label_check(per.sum() / loss_normalizer(self.norm_mode, self.outer, self.inner, count),
                                     poison)


# ----------------------------------------------------------------------------------------------
# The teacher sub-net of a KD layer
# ----------------------------------------------------------------------------------------------

def _producer(layers: Sequence[pb.LayerParameter], blob: str, before: int) -> int | None:
    """Index of the last layer before `before` that writes `blob` (in-place layers included)."""
    for i in range(before - 1, -1, -1):
        if blob in layers[i].top:
            return i
    return None


def teacher_layers(net: "Net", kd_layer: str) -> list[str]:
    """The layers that compute the teacher bottom (bottom 1) of KD layer `kd_layer`, in net order:
    every ancestor of that blob, walking back to the data layers (layers without bottoms, which
    are not listed: they have no parameters and the student shares them)."""
    layers = list(net.param.layer)
    names = [lp.name for lp in layers]
    start = names.index(kd_layer)
    seen: set[int] = set()
    todo = [(layers[start].bottom[1], start)]
    while todo:
        blob, before = todo.pop()
        i = _producer(layers, blob, before)
        if i is None or i in seen or not len(layers[i].bottom):
            continue
        seen.add(i)
        todo.extend((b, i) for b in layers[i].bottom)
    return [names[i] for i in sorted(seen)]


def check_teachers(net: "Net") -> list[str]:
    """Warn about every layer feeding a KD layer's teacher bottom that the solver would train (a
    learnable blob with non-zero lr_mult, its own or that of the layer it shares the blob with).
    Returns the warnings (also logged)."""
    entries = net.learnable_params()
    by_layer: dict[tuple[str, int], float] = {(e.layer, e.index): e.lr_mult for e in entries if e.learnable}
    by_name: dict[str, float] = {e.name: e.lr_mult for e in entries if e.learnable and e.name}
    warnings: list[str] = []
    warned: set[str] = set()
    for name, layer in net.named_layers():
        if not isinstance(layer, KnowledgeDistillationLoss):
            continue
        teacher_blob = layer.layer_param.bottom[1]
        for tname in teacher_layers(net, name):
            if tname in warned:
                continue
            tl = net.layer(tname)
            for i in range(len(tl.blob_names)):
                if not tl.blob_is_learnable(i):
                    continue
                spec = tl.layer_param.param[i] if i < len(tl.layer_param.param) else pb.ParamSpec()
                lr = by_name.get(spec.name) if spec.name else None
                if lr is None:
                    lr = by_layer.get((tname, i), float(spec.lr_mult))
                if lr != 0:
                    msg = (f"layer '{tname}' computes the teacher logits '{teacher_blob}' of KD layer "
                           f"'{name}' but has lr_mult {lr:g} (param {i}): the solver will train it; "
                           f"give the teacher's layers param {{ lr_mult: 0 decay_mult: 0 }}")
                    log.warning(msg)
                    warnings.append(msg)
                    warned.add(tname)
                    break
    return warnings


class _TeacherCheck(TrainingCallback):
    """Warns, when a solver is built, about KD teacher layers the solver would train."""

    def attach(self, solver) -> None:
        if solver.root:
            check_teachers(solver.net)


@register_callback
def _teacher_check(solver) -> TrainingCallback | None:
    kd = any(isinstance(layer, KnowledgeDistillationLoss) for _, layer in solver.net.named_layers())
    return _TeacherCheck() if kd else None
