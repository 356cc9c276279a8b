"""Solver field `global_prune` (recipes-spec §4.4, §5.3, T3): MicroNet's periodic global magnitude pruning
with shadow weights.

    global_prune { rate: 0.75 interval: 50 stop_iter: 5000 [layer: "conv1" ...] strict_greater: true }

Which layers: the named ones (`layer`, any Masked*/Quant Convolution or InnerProduct of the TRAIN net), or, with
no `layer`, every masked convolution (MaskedConvolution, QuantConvolution). DNS and INQ layers have mask rules of
their own and are refused.

The update (the source's `sparse_param.py`): over all N weights of those layers together,
`num_prune = ceil(N·rate)`, `num_remain = N − num_prune`, `t = topk(|W|, num_remain)[-1]` and `M = |W| > t`.
W is the raw weight blob, not W⊙M: the Masked/Quant layers compute with W⊙M but give W the unmasked gradient, so
W is the source's dense shadow P and a pruned weight that grows back above the threshold returns. The strict `>`
prunes the num_remain-th largest weight itself, so num_remain − 1 are kept when there are no ties (Q12, the
faithful default); `strict_greater: false` keeps `|W| >= t` (num_remain, plus ties). Bias masks are not touched.
`rate` is read as the decimal the user wrote (0.7, not float32's 0.699999988), as the source's Python float.

When: before the forward of iteration `it` (after the solver has told the net the iteration), if `it == 0` or
`it < stop_iter` and `(it + 1) % interval == 0`: iterations 0, 49, 99, ..., 4999 with the defaults, never after.
`interval: 0` prunes at iteration 0 only. The schedule is a function of the iteration and the masks are blobs of
the snapshot, so a resumed run continues bit-identically with no state of its own. The weights are identical on
every process of a data-parallel run (rank 0's at the start, averaged gradients), so every rank computes the
same masks; the masked layers' `replicated_state()` lets the snapshot check prove it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import NetcompressError
from ..layers.masked import MaskedLayer
from ..log import get_logger
from ..solvers.callbacks import TrainingCallback, register_callback

log = get_logger("solver")

__all__ = ["GlobalPrune", "prune_due", "global_threshold_masks"]

# Mask kinds whose masks a solver-level pruner may write (layers/masked.py, layers/quant.py).
PRUNABLE_KINDS = ("masked", "quant")


def prune_due(iteration: int, interval: int, stop_iter: int) -> bool:
    """Whether the masks are updated before iteration `iteration` (the source's condition)."""
    if iteration == 0:
        return True
    return interval > 0 and iteration < stop_iter and (iteration + 1) % interval == 0


def _decimal(rate: float) -> float:
    # The proto field is a float32; the source's rate was a Python float parsed from the command line.
    return float(str(np.float32(rate)))


def global_threshold_masks(weights: list[torch.Tensor], rate: float, strict_greater: bool = True
                           ) -> tuple[list[torch.Tensor], float, int]:
    """The masks of one global magnitude-pruning step over `weights` (any shapes, one dtype and device).

    Returns (masks shaped like the weights, in their dtype; the threshold t; num_remain).
    """
    flat = torch.cat([w.detach().reshape(-1).abs() for w in weights])
    n = flat.numel()
    num_prune = math.ceil(n * rate)
    num_remain = n - num_prune
    if num_remain < 1:
        raise NetcompressError(f"global_prune: rate {rate:g} keeps none of the {n} weights")
    # topk(|W|, num_remain)[-1] is the num_remain-th largest: the (n - num_remain + 1)-th smallest.
    t = torch.kthvalue(flat, n - num_remain + 1).values
    masks = []
    for w in weights:
        a = w.detach().abs()
        keep = a > t if strict_greater else a >= t
        masks.append(keep.to(w.dtype))
    return masks, float(t), num_remain


class GlobalPrune(TrainingCallback):
    """The `global_prune` solver field as a training callback (see the module docstring)."""

    def __init__(self, solver, param) -> None:
        self.rate = _decimal(param.rate)
        self.interval = int(param.interval)
        self.stop_iter = int(param.stop_iter)
        self.strict_greater = bool(param.strict_greater)
        src = solver.source
        if not 0.0 <= self.rate < 1.0:
            raise NetcompressError(f"{src}: global_prune.rate must be in [0, 1) (the fraction of weights to "
                                   f"prune), got {self.rate:g}")
        if self.interval < 0:
            raise NetcompressError(f"{src}: global_prune.interval must be >= 0 (0: prune at iteration 0 only), "
                                   f"got {self.interval}")
        self.names = list(param.layer)
        self.layers = self._select(solver, self.names)

    def nets_rebuilt(self, solver) -> None:
        self.layers = self._select(solver, self.names)  # a grown net has new layer objects

    @staticmethod
    def _select(solver, names: list[str]) -> list[MaskedLayer]:
        net, src = solver.net, solver.source
        if names:
            out = []
            for name in names:
                if not net.has_layer(name):
                    raise NetcompressError(f"{src}: global_prune.layer '{name}' is not a layer of the train net "
                                           f"'{net.name}'")
                layer = net.layer(name)
                if not (isinstance(layer, MaskedLayer) and layer.mask_kind in PRUNABLE_KINDS):
                    raise NetcompressError(
                        f"{src}: global_prune.layer '{name}' is a {layer.type_name} layer; global_prune writes "
                        "the masks of MaskedConvolution, MaskedInnerProduct, QuantConvolution and "
                        "QuantInnerProduct layers (DNS and INQ layers update their own)")
                if layer in out:
                    raise NetcompressError(f"{src}: global_prune.layer '{name}' is named twice")
                out.append(layer)
            return out
        out = [layer for _, layer in net.named_layers()
               if isinstance(layer, MaskedLayer) and layer.mask_kind in PRUNABLE_KINDS
               and layer.weight_param == "convolution_param"]
        if not out:
            raise NetcompressError(f"{src}: global_prune without `layer` prunes every MaskedConvolution and "
                                   f"QuantConvolution of the train net, and '{net.name}' has none")
        return out

    def before_iteration(self, solver) -> None:
        if prune_due(solver.iter, self.interval, self.stop_iter):
            self.update(solver.iter, verbose=solver.root)

    def update(self, iteration: int, verbose: bool = True) -> None:
        """One global mask update from the current raw weights."""
        weights = [layer.weight for layer in self.layers]
        masks, t, num_remain = global_threshold_masks(weights, self.rate, self.strict_greater)
        kept = 0
        with torch.no_grad():
            for layer, m in zip(self.layers, masks):
                layer.weight_mask.copy_(m)
                kept += int(m.count_nonzero())
        if verbose:
            total = sum(w.numel() for w in weights)
            log.info("global_prune: iteration %d: kept %d of %d weights in %d layers (num_remain %d, "
                     "threshold %.6g)", iteration, kept, total, len(self.layers), num_remain, t)


@register_callback
def _global_prune(solver) -> TrainingCallback | None:
    if not solver.param.HasField("global_prune"):
        return None
    return GlobalPrune(solver, solver.param.global_prune)
