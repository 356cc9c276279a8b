"""DNS ops (reference-semantics §2): the masked weight with its splicing gradient, the statistics,
the threshold rule, the fused surgery pass and the per-call gradient rule; wrappers, fake kernels
and autograd side by side."""
from __future__ import annotations

import torch

from ._common import is_compiling as _is_compiling, lean as _lean, ops as _ops, scalar_tensor as _scalar_tensor

__all__ = ["dns_masked_weight", "dns_stats", "dns_thresholds", "dns_update_mask_", "dns_splice_grad_"]


@torch.library.register_fake("netcompress::dns_masked_weight")
def _dns_masked_weight_fake(weight, mask):
    return weight.new_empty(weight.shape)


# Autograd (csrc/autograd.cpp, in C++ so that the training step runs no Python per call): splicing (§2.4),
# the weight receives ∂L/∂(W⊙M) unmasked, so pruned weights keep learning and can be spliced back; the mask
# is a buffer and receives nothing. Not the true derivative, on purpose.


@torch.library.register_fake("netcompress::dns_stats")
def _dns_stats_fake(weight, weight_mask, bias=None, bias_mask=None):
    return weight.new_empty((4,), dtype=torch.float64)


@torch.library.register_fake("netcompress::dns_update_mask_")
def _dns_update_mask_fake(weight, mask, threshold_low, threshold_high, masked_out):
    return None


@torch.library.register_fake("netcompress::dns_splice_grad_")
def _dns_splice_grad_fake(diff, mask, grad):
    return None


def dns_masked_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """W ⊙ M, the weight a DNS layer computes with (§2.3.5).

    weight, mask: same shape (any), dtype (float16/bfloat16/float32/float64) and device. Returns a new
    contiguous tensor of that shape. Its gradient flows to `weight` unmasked (§2.4); `mask` gets none.
    """
    if _is_compiling():
        return _ops.dns_masked_weight(weight, mask)
    return _lean.dns_masked_weight(weight, mask)


def dns_stats(weight: torch.Tensor, weight_mask: torch.Tensor, bias: torch.Tensor | None = None,
              bias_mask: torch.Tensor | None = None) -> torch.Tensor:
    """DNS statistics over the masked weight and bias together (§2.3.1, GPU semantics).

    Returns a float64 tensor `[mu, std, n_weight, n_bias]` of shape (4,) on the weight's device, where
    n_* = #{m·w != 0}, mu = Σ|m·w| / n and std = sqrt((Σ m·w² − n·mu²) / n), n = n_weight + n_bias: the
    population std of |w| over surviving nonzero entries. n == 0 gives NaN (as the reference, which then
    never changes masks). Sums are float64 over fixed blocks, so the result does not depend on the thread
    count; the reference summed in float32, so thresholds can differ in the last float32 bits.
    """
    with torch.no_grad():
        return _ops.dns_stats(weight, weight_mask, bias, bias_mask)


def dns_thresholds(stats: torch.Tensor, c_rate: float, alpha_low: float = 0.95,
                   alpha_high: float = 1.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_low·T, alpha_high·T) with T = max(mu + c_rate·std, 0) (§2.3.4), as 0-dim float32 tensors.

    `stats` comes from `dns_stats`; everything stays on its device (no host sync). The arithmetic is
    float32, as both reference paths compute it: mu and std are rounded to float32 and c_rate and the
    alphas (Python floats) are rounded to float32 by the multiplications. A NaN T (no survivors) stays
    NaN (`clamp` propagates it), so masks freeze as in the reference. This is the one threshold rule:
    the DNS layers call it.
    """
    mu, std = stats[0].float(), stats[1].float()
    t = (mu + std * c_rate).clamp_min(0.0)
    return t * alpha_low, t * alpha_high


def dns_update_mask_(weight: torch.Tensor, mask: torch.Tensor, threshold_low: float | torch.Tensor,
                     threshold_high: float | torch.Tensor, masked_out: torch.Tensor) -> None:
    """One fused pass of DNS surgery (§2.3.4), then the masked weight (§2.3.5).

    For each entry: if m == 1 and |w| <= low: m = 0; elif m == 0 and |w| > high: m = 1; other mask
    values are kept. Then masked_out = w ⊙ m. weight, mask, masked_out: same shape, dtype and device;
    masked_out must not alias weight. Thresholds: Python floats or one-element tensors on the weight's
    device or the CPU; they are compared in the weight's arithmetic type (float32 for float16/bfloat16).
    """
    with torch.no_grad():
        _ops.dns_update_mask_(weight, mask, _scalar_tensor(threshold_low), _scalar_tensor(threshold_high),
                              masked_out)


def dns_splice_grad_(diff: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor) -> None:
    """One backward call's parameter-gradient rule of a DNS layer (§2.4), in one pass, in place.

    diff <- mask ⊙ diff + grad: the gradient accumulated so far survives only where the mask is 1, and the
    new gradient `grad` (∂L/∂(W⊙M), "splicing") is added unmasked. diff, mask, grad: same shape, dtype
    (float16/bfloat16/float32/float64) and device; arithmetic in the dtype (float32 for 16-bit types).
    """
    with torch.no_grad():
        _ops.dns_splice_grad_(diff, mask, grad)
