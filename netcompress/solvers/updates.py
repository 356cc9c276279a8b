"""Caffe's per-parameter update rules (ComputeUpdateValue), each writing the update into `g`.

The net then applies `w -= g` (Caffe's Net::Update). `h` names Caffe's history blobs. Freezing
(a layer's `update_mask`, Decision 5) multiplies the update value and the history by the
mask for every solver: frozen entries get a zero update and a zero history, as the reference's SGD
and LarsSGD do.
"""
from __future__ import annotations

import math

import torch

from .. import ops
from ..errors import NetcompressError

__all__ = ["UPDATE_RULES", "RATE_IN_HISTORY", "history_count"]


def _freeze(mask: torch.Tensor | None, *tensors: torch.Tensor) -> None:
    if mask is not None:
        for t in tensors:
            t.mul_(mask)


def sgd(g, hist, *, rate, momentum, mask=None, **_):
    """h = momentum*h + rate*g; h *= mask (frozen entries: a layer's update_mask); g = h.

    One pass of the fused op (read g, h and the mask, write g and h) instead of four ATen kernels over h.
    Rounding: momentum*h and rate*g are each rounded, then their sum. The former add_(g, alpha=rate) could fuse
    rate*g + h into one FMA (so can the reference's BLAS or GPU code): results agree to the last bit or two.
    """
    h = hist[0]
    if h.dtype == g.dtype and h.device == g.device and (mask is None or mask.dtype == g.dtype):
        ops.sgd_momentum_update_(g, h, mask, momentum, rate)
        return
    h.mul_(momentum).add_(g, alpha=rate)
    _freeze(mask, h)
    g.copy_(h)


def nesterov(g, hist, *, rate, momentum, mask=None, **_):
    """h_new = momentum*h + rate*g; update = (1+momentum)*h_new - momentum*h_old."""
    h = hist[0]
    old = h.clone()
    h.mul_(momentum).add_(g, alpha=rate)
    _freeze(mask, h)
    g.copy_(h).mul_(1 + momentum).sub_(old, alpha=momentum)
    _freeze(mask, g)


def adagrad(g, hist, *, rate, delta, mask=None, **_):
    """h += g^2; update = rate * g / (sqrt(h) + delta)."""
    h = hist[0]
    h.addcmul_(g, g)
    _freeze(mask, h)
    g.div_(h.sqrt().add_(delta)).mul_(rate)
    _freeze(mask, g)


def rmsprop(g, hist, *, rate, delta, rms_decay, mask=None, **_):
    """h = rms_decay*h + (1-rms_decay)*g^2; update = rate * g / (sqrt(h) + delta)."""
    h = hist[0]
    h.mul_(rms_decay).addcmul_(g, g, value=1 - rms_decay)
    _freeze(mask, h)
    g.div_(h.sqrt().add_(delta)).mul_(rate)
    _freeze(mask, g)


def adadelta(g, hist, *, rate, delta, momentum, mask=None, **_):
    """Two histories: h1 (squared gradients), h2 (squared updates), both decayed by momentum.

    h1 = m*h1 + (1-m)*g^2; u = g * sqrt((h2 + delta) / (h1 + delta)); h2 = m*h2 + (1-m)*u^2;
    update = rate * u.
    """
    h1, h2 = hist
    h1.mul_(momentum).addcmul_(g, g, value=1 - momentum)
    g.mul_(((h2 + delta) / (h1 + delta)).sqrt_())
    h2.mul_(momentum).addcmul_(g, g, value=1 - momentum)
    _freeze(mask, h1, h2)
    g.mul_(rate)
    _freeze(mask, g)


def adam(g, hist, *, rate, momentum, momentum2, delta, t, mask=None, **_):
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    update = rate * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps), t = iter + 1."""
    m, v = hist
    b1, b2 = momentum, momentum2
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    _freeze(mask, m, v)
    correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    torch.div(m, v.sqrt().add_(delta), out=g)
    g.mul_(rate * correction)
    _freeze(mask, g)


# name -> (rule, number of history blobs per parameter, uses lr_mult)
UPDATE_RULES = {
    "SGD": (sgd, 1, True),
    "Nesterov": (nesterov, 1, True),
    "AdaGrad": (adagrad, 1, True),
    "RMSProp": (rmsprop, 1, True),
    "AdaDelta": (adadelta, 2, True),
    "Adam": (adam, 2, True),
    "LarsSGD": (sgd, 1, False),  # the trust ratio replaces lr_mult (reference-semantics 4.5)
}


# Rules whose history holds the rate (Caffe: h <- m*h + rate*g). With momentum_form LR_OUTSIDE they
# run with rate 1 and the rate multiplies the update (h <- m*h + g; w -= rate*h: PyTorch's SGD,
# TensorFlow's MomentumOptimizer). The other rules already apply the rate outside their histories,
# so both forms are the same for them.
RATE_IN_HISTORY = frozenset({"SGD", "Nesterov", "LarsSGD"})


def history_count(solver_type: str) -> int:
    try:
        return UPDATE_RULES[solver_type][1]
    except KeyError:
        raise NetcompressError(f"Unknown solver type: \"{solver_type}\" (known: "
                               f"{', '.join(UPDATE_RULES)})") from None
