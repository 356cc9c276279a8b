"""INQ ops (reference-semantics §3): one-pass mask statistics, the selection threshold and the
power-of-two quantization; wrappers and fake kernels side by side. The stage algorithm that uses
them (ComputeQuantumRange, ShapeIntoTwoPower's counts) lives with the INQ layers, in
`netcompress.layers.inq`."""
from __future__ import annotations

import torch

from ._common import ops as _ops, scalar_tensor as _scalar_tensor

__all__ = ["inq_mask_stats", "inq_threshold", "inq_quantize_"]


@torch.library.register_fake("netcompress::inq_mask_stats")
def _inq_mask_stats_fake(weight, mask):
    return weight.new_empty((5,), dtype=torch.float64)


@torch.library.register_fake("netcompress::inq_threshold")
def _inq_threshold_fake(weight, mask, n_keep):
    return weight.new_empty(())


@torch.library.register_fake("netcompress::inq_quantize_")
def _inq_quantize_fake(weight, mask, threshold, n2):
    return None


def inq_mask_stats(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One pass over an INQ blob (§3.3): float64 (5,) `[max_t, max_q, n_t, n_q, n_other]`.

    max_t / n_t: largest |v| and count over mask == 1 (not yet quantized); max_q / n_q: the same over
    mask == 0 (quantized or pruned); n_other: entries with any other mask value. A maximum is −1 when its
    set is empty. weight, mask: same shape, float32/float64, same device.
    """
    with torch.no_grad():
        return _ops.inq_mask_stats(weight, mask)


def inq_threshold(weight: torch.Tensor, mask: torch.Tensor, n_keep: int) -> torch.Tensor:
    """0-dim tensor (weight's dtype and device): the `n_keep`-th smallest |v| (0-based) among mask == 1
    entries, i.e. `sorted(|v| over mask == 1)[n_keep]` (§3.4.8); +inf when n_keep >= #{mask == 1}."""
    with torch.no_grad():
        return _ops.inq_threshold(weight, mask, int(n_keep))


def inq_quantize_(weight: torch.Tensor, mask: torch.Tensor, threshold: float | torch.Tensor, n2: int) -> None:
    """Quantize every mask == 1 entry with |v| >= threshold (ties included), in place (§3.4.8, §3.5).

    v <- sign(v)·2^e with e = floor(log(4|v|/3)/log 2) in float64, if e >= n2, else 0 (no upper clamp);
    mask <- 0. weight, mask: same shape, float32/float64, same device. threshold: a float or a one-element
    tensor (e.g. from `inq_threshold`) on the weight's device or the CPU.
    """
    with torch.no_grad():
        _ops.inq_quantize_(weight, mask, _scalar_tensor(threshold), int(n2))
