"""The solver's fused SGD update with INQ-style freezing (reference-semantics §4.4, §3.6, Decision 5)."""
from __future__ import annotations

import torch

from ._common import ops as _ops

__all__ = ["sgd_momentum_update_"]


@torch.library.register_fake("netcompress::sgd_momentum_update_")
def _sgd_momentum_update_fake(grad, history, mask, momentum, local_rate):
    return None


def sgd_momentum_update_(grad: torch.Tensor, history: torch.Tensor, mask: torch.Tensor | None,
                         momentum: float, local_rate: float) -> None:
    """Caffe's SGD update value with INQ freezing, in one pass, in place.

    history <- momentum·history + local_rate·grad; history <- history ⊙ mask (if given); grad <- history.
    Frozen (mask 0) entries thus get a zero update and zero history. grad, history, mask: same shape,
    dtype (float16/bfloat16/float32/float64) and device; arithmetic in the dtype (float32 for 16-bit).
    """
    with torch.no_grad():
        _ops.sgd_momentum_update_(grad, history, mask, float(momentum), float(local_rate))
