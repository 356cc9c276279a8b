"""MicroNet's quantizers as ops (recipes-spec §4.5 ActQuant, §4.6 weight quantizer, §5.2 IntQuant).

The element-wise rules are fused C++/CUDA kernels (csrc/kernels/quant.h); this module registers their fake
kernels and autograd formulas next to each other and exposes typed wrappers. `round` is torch's: halves to even.
A scale α == 0 gives the code 0 everywhere (recipes-spec Q13: an all-zero weight row gets α = 0 and q = 0, where
the source's 0/0 gave NaN). Gradients are the straight-through estimators of the source, not true derivatives:
activations pass the gradient where the unclamped code lies in the range, weights receive it unchanged.
"""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loads the op schemas)

__all__ = [
    "act_quant",
    "act_quant_range",
    "int_quant",
    "quant_weight",
    "quant_weight_codes",
    "quant_weight_fit",
    "weight_quant_range",
]

_ops = torch.ops.netcompress


# ---------------------------------------------------------------------------------------------------
# Fake kernels and autograd, next to each other.
# ---------------------------------------------------------------------------------------------------

@torch.library.register_fake("netcompress::act_quant")
def _act_quant_fake(x, alpha, low, high):
    return x.new_empty(x.shape)


@torch.library.register_fake("netcompress::_act_quant_backward")
def _act_quant_backward_fake(grad, x, alpha, low, high):
    return x.new_empty(x.shape)


# Autograd (csrc/autograd.cpp, in C++): §4.5 STE, dy/dx = [low <= round(x/α) <= high] through the private
# backward op; α is a calibrated constant and gets no gradient.


@torch.library.register_fake("netcompress::int_quant")
def _int_quant_fake(x, low, high):
    return x.new_empty(x.shape)


@torch.library.register_fake("netcompress::_int_quant_backward")
def _int_quant_backward_fake(grad, x, low, high):
    return x.new_empty(x.shape)


# Autograd (csrc/autograd.cpp, in C++): the same STE through _int_quant_backward.


@torch.library.register_fake("netcompress::quant_weight")
def _quant_weight_fake(weight, mask, alpha, low, high):
    return weight.new_empty(weight.shape)


# Autograd (csrc/autograd.cpp, in C++): §4.6 / §5.2 dW = dWq, straight through the quantizer and the mask
# (MicroNet's P.grad = W.grad); the mask and α are buffers and get nothing.


@torch.library.register_fake("netcompress::quant_weight_codes")
def _quant_weight_codes_fake(weight, mask, alpha, low, high):
    return weight.new_empty(weight.shape)


# ---------------------------------------------------------------------------------------------------
# Ranges
# ---------------------------------------------------------------------------------------------------

def act_quant_range(bitwidth: int, calib_min: float, sign: str = "AUTO") -> tuple[int, int]:
    """ActQuant's integer range (lb, ub) (§4.5).

    Signed (sign "SIGNED", or "AUTO" with calib_min < 0): b' = b if calib_min < −1 else min(8, b + 1), and
    [−2^(b'−1), 2^(b'−1) − 1]; so 4 bits give [−8, 7] below −1 and [−16, 15] within [−1, 0). Note the source's
    cap: above 7 bits b' is at most 8. Unsigned ("UNSIGNED", or "AUTO" with calib_min >= 0): [0, 2^b − 1].
    """
    if sign not in ("AUTO", "SIGNED", "UNSIGNED"):
        raise ValueError(f"act_quant_range: sign must be AUTO, SIGNED or UNSIGNED, got {sign!r}")
    if sign == "SIGNED" or (sign == "AUTO" and calib_min < 0):
        b = bitwidth if calib_min < -1 else min(8, bitwidth + 1)
        return -(2 ** (b - 1)), 2 ** (b - 1) - 1
    return 0, 2 ** bitwidth - 1


def weight_quant_range(bitwidth: int) -> tuple[int, int]:
    """The weight quantizer's integer range [−2^(b−1), 2^(b−1) − 1] (§4.6): [−8, 7] at 4 bits."""
    clip = 2 ** (bitwidth - 1)
    return -clip, clip - 1


# ---------------------------------------------------------------------------------------------------
# Activations (§4.5, §5.2)
# ---------------------------------------------------------------------------------------------------

def act_quant(x: torch.Tensor, alpha: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """ActQuant's forward, y = α·clamp(round(x/α), low, high), in one pass.

    x: any shape, float16/bfloat16/float32/float64 (arithmetic in float32 for the 16-bit types). alpha: a
    one-element floating tensor on x's device or the CPU (read on the device, no host sync); α == 0 gives 0.
    Differentiable in x by the straight-through estimator: dy/dx = [low <= round(x/α) <= high].
    """
    return _ops.act_quant(x, alpha, float(low), float(high))


def int_quant(x: torch.Tensor, low: float = 0.0, high: float = 15.0) -> torch.Tensor:
    """IntQuant's forward, y = clamp(round_half_even(x), low, high) (§5.2), with ActQuant's STE gradient."""
    return _ops.int_quant(x, float(low), float(high))


# ---------------------------------------------------------------------------------------------------
# Weights (§4.6)
# ---------------------------------------------------------------------------------------------------

def quant_weight(weight: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, low: float,
                 high: float) -> torch.Tensor:
    """Wq = α_r·clamp(round(v/α_r), low, high) per row r, v = weight ⊙ mask, in one pass.

    weight: (rows, ...) with one output channel per row; mask: like weight or None; alpha: (rows,) of the weight's
    dtype and device. A row with α_r == 0 gives 0. The gradient reaches `weight` unchanged (dW = dWq: straight
    through the quantizer and the mask); mask and alpha get none.
    """
    return _ops.quant_weight(weight, mask, alpha, float(low), float(high))


def quant_weight_codes(weight: torch.Tensor, mask: torch.Tensor | None, alpha: torch.Tensor, low: float,
                       high: float) -> torch.Tensor:
    """The integer codes q = clamp(round(v/α_r), low, high) of `quant_weight`, in the weight's dtype (§4.9's
    integerisation). Not differentiable."""
    with torch.no_grad():
        return _ops.quant_weight_codes(weight, mask, alpha, float(low), float(high))


def quant_weight_fit(weight: torch.Tensor, mask: torch.Tensor | None, bitwidth: int, iters: int = 100,
                     per_channel: bool = True) -> torch.Tensor:
    """The scales α of §4.6 by alternating least squares, shape (rows,) in the weight's dtype and device.

    Per row (all rows together when not per_channel), on v = weight ⊙ mask with clip = 2^(b−1):
    α ← max|v|/clip; q ← clamp(round(v/α), −clip, clip−1); then `iters` times α ← ⟨v,q⟩/⟨q,q⟩ and q again;
    the last iterate is kept. A row with ⟨q,q⟩ = 0 (all-zero, e.g. fully pruned) gets α = 0 (Q13).

    The codes come from the projection kernel; the fit itself is a torch composition: each of the `iters` steps
    is a per-row reduction that depends on the previous one, it runs once per epoch (refit EPOCH_START) rather
    than per forward, and torch's row sums are already tuned on both backends. The dot products are summed in
    float64 (the source summed in float32), α is rounded to the weight's dtype at every step, so the codes are
    those the layer's forward computes with that α. No host sync.
    """
    low, high = weight_quant_range(bitwidth)
    with torch.no_grad():
        rows = weight.shape[0]
        if weight.numel() == 0:
            return weight.new_zeros(rows)
        w = weight.detach().reshape(rows if per_channel else 1, -1)
        m = None if mask is None else mask.detach().reshape(w.shape)
        v = w.double() if m is None else w.double() * m.double()
        alpha = (v.abs().amax(dim=1) / float(2 ** (bitwidth - 1))).to(weight.dtype)
        for _ in range(int(iters)):
            q = _ops.quant_weight_codes(w, m, alpha, float(low), float(high)).double()
            num, den = (v * q).sum(dim=1), (q * q).sum(dim=1)
            new = torch.where(den > 0, num / den, torch.zeros_like(num)).to(weight.dtype)
            if torch.equal(new, alpha):
                break  # a fixed point (tens of steps): every further step returns it unchanged
            alpha = new
        return alpha if per_channel else alpha.expand(rows).clone()
