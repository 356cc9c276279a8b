"""SNIP connection sensitivity (recipes-spec 2.1, 2.3.4, 5.3.2) and the solver's `snip_schedule`.

Scoring (`connection_sensitivity`), shared with the `snip_prune` script: for each chosen masked
layer (MaskedConvolution / MaskedInnerProduct, `mask_kind` "masked") the score of weight j is
`s_j = |g_j · (W⊙M)_j|`, g = ∂L/∂(W⊙M) (the masked layers' weight gradient, which is unmasked), on
real batches of the net's TRAIN data layer. L is the sum of the net's loss tops, each with weight 1
(SNIP's plain cross-entropy; INRIA's `sdn_loss` with coefficients 1: every SDNLoss's
`coefficient_override` is 1 while scoring). Already-pruned entries therefore score 0. With
`reinit` the weights are first replaced by `xavier_normal_` draws (std sqrt(2 / (fan_in +
fan_out)), fans = channels x kernel area) "on a copy": the net keeps its own weights. Scoring
changes nothing in the net: blobs (BatchNorm statistics included), layer state (data positions,
generators) and the torch generator are put back, so the batches scored are the ones training reads
next.

Selection (`keep_masks`, mil-ad/snip): concatenate the scores of the scope, divide by their sum,
`thr` = the k-th largest normalised score with k = int(N · keep), mask = (s / Σs >= thr). Ties at
`thr` can keep more than k. Biases are never scored or masked.

`snip_schedule` (a training callback; blocks are the growth stages, `recipes.growth.layer_stage`):
at the start of each epoch listed (after the growth of that epoch, before its first iteration) it
scores `batch_size` TRAIN images and multiplies new masks into the old ones, zeroing the pruned raw
weights as INRIA does:

- SKIP_LAYER: the j-th prune epoch prunes block j only, with keep_ratio[j], at the current weights;
- ITERATIVE: every grown block i with `keep_i = max(keep_ratio[i]^(steps_i+1), min_ratio[i])`,
  `steps_i = #{p in epoch : gr[i] <= p <= e} - 1`, `gr = [1] + growth.epoch`; top-k per block;
- NORMAL: one global top-k with the single keep_ratio over every grown block.

`reinit` (Q5): when the field is not set, NORMAL re-draws Xavier weights on a copy (mil-ad's
`snip.snip`) and the other policies score the trained weights (INRIA HEAD ignores its flag); setting
the field applies it to any policy. The draws come from the train net's named generator "snip",
which snapshots save, so a resumed run prunes identically. In a data-parallel run rank 0's masks are
broadcast.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ..errors import NetcompressError
from ..layers.masked import MaskedLayer
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ..solvers.callbacks import TrainingCallback, register_callback
from . import growth as _growth  # noqa: F401  (registers first: growth precedes pruning at one epoch)
from .growth import layer_stage

if TYPE_CHECKING:  # pragma: no cover
    from ..net import Net
    from ..solvers.solver import Solver

__all__ = ["SNIP_GENERATOR", "prunable_layers", "xavier_normal_", "connection_sensitivity", "keep_masks",
           "apply_masks", "SnipSchedule", "iterative_keep"]

log = get_logger("solver")

#: The train net's named generator for the Xavier draws of scoring (saved in snapshots).
SNIP_GENERATOR = "snip"


def _decimal(v: float) -> float:
    """A float proto field as the decimal written (0.8, not float32's 0.800000011920929)."""
    return float(str(np.float32(v)))


def prunable_layers(net: "Net") -> list[tuple[str, MaskedLayer]]:
    """The net's plain masked layers (MaskedConvolution, MaskedInnerProduct, ...), in net order."""
    return [(n, l) for n, l in net.named_layers() if isinstance(l, MaskedLayer) and l.mask_kind == "masked"]


def xavier_normal_(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PyTorch's `xavier_normal_` (gain 1) on `w` (out, in, *kernel), drawn from a CPU generator."""
    receptive = math.prod(w.shape[2:]) if w.dim() > 2 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    std = math.sqrt(2.0 / float(fan_in + fan_out))
    draw = torch.empty(tuple(w.shape), dtype=torch.float32).normal_(0.0, std, generator=generator)
    with torch.no_grad():
        w.copy_(draw.to(device=w.device, dtype=w.dtype))
    return w


@contextlib.contextmanager
def _preserved(net: "Net", advance: torch.Generator | None = None) -> Iterator[None]:
    """Put the net back as it was: every blob, each layer's snapshot state, the named generators
    (except `advance`, whose draws are spent) and torch's generator."""
    blobs = {n: [t.detach().clone() for t in l.blobs()] for n, l in net.named_layers() if l.blob_names}
    states = {n: l.snapshot_state() for n, l in net.named_layers()}
    gens = {k: g.get_state() for k, g in net.ctx.named_generators().items() if g is not advance}
    torch_rng = torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for n, saved in blobs.items():
                for t, v in zip(net.layer(n).blobs(), saved):
                    t.copy_(v)
        for n, st in states.items():
            if st is not None:
                net.layer(n).restore_state(st)
        for k, st in gens.items():
            net.ctx.named_generator(k).set_state(st)
        torch.set_rng_state(torch_rng)
        net.zero_grad(set_to_none=True)


def _loss_all_ones(net: "Net") -> torch.Tensor:
    tops = list(net.loss_weights)
    if not tops:
        raise NetcompressError(f"net '{net.name}' has no loss: SNIP scores the gradient of the loss")
    loss = net.blobs[tops[0]].sum()
    for t in tops[1:]:
        loss = loss + net.blobs[t].sum()
    return loss


def connection_sensitivity(net: "Net", layers: Sequence[str], batches: int = 1,
                           reinit: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """|g ⊙ (W⊙M)| of each layer in `layers` (masked layers of `net`), on `batches` forward passes of
    the net's own data (their mean loss), with every loss weight 1; `reinit`: score Xavier draws
    from this generator instead of the weights. The net is left as it was (see the module
    docstring). Returns float tensors shaped like each layer's weight."""
    from ..layers.sdn import SDNLoss

    if batches < 1:
        raise NetcompressError(f"SNIP needs at least one batch, got {batches}")
    chosen = [(n, net.layer(n)) for n in layers]
    for n, l in chosen:
        if not isinstance(l, MaskedLayer):
            raise NetcompressError(f"layer '{n}' ({l.type_name}) is not a masked layer: SNIP scores "
                                   "MaskedConvolution / MaskedInnerProduct layers")
    sdn = [l for _, l in net.named_layers() if isinstance(l, SDNLoss)]
    grads_on = [(l.weight, l.weight.requires_grad) for _, l in chosen]
    with _preserved(net, advance=reinit):
        try:
            for l in sdn:
                l.coefficient_override = 1.0
            for w, _ in grads_on:
                w.requires_grad_(True)
            if reinit is not None:
                for _, l in chosen:
                    xavier_normal_(l.weight, reinit)
            net.zero_grad(set_to_none=True)
            with torch.enable_grad():
                for _ in range(batches):
                    net()
                    loss = _loss_all_ones(net)
                    if not loss.requires_grad:  # (a loss_weight on a data top, say: autograd's error named no layer)
                        raise NetcompressError(f"net '{net.name}': its loss ({', '.join(net.loss_weights)}) does not "
                                               f"depend on the weights of {', '.join(n for n, _ in chosen)}: SNIP "
                                               "scores the gradient of the loss with respect to them")
                    (loss / batches if batches > 1 else loss).backward()
            scores = {}
            for n, l in chosen:
                g = l.weight.grad
                wm = (l.weight * l.weight_mask).detach()
                scores[n] = torch.zeros_like(wm) if g is None else (g.detach() * wm).abs()
        finally:
            for l in sdn:
                l.coefficient_override = None
            for w, flag in grads_on:
                w.requires_grad_(flag)
    return scores


def keep_masks(scores: dict[str, torch.Tensor], keep_ratio: float) -> tuple[dict[str, torch.Tensor], int]:
    """mil-ad's selection over every score of `scores` together: k = int(N · keep_ratio), masks
    (0/1, the scores' dtype) of s / Σs >= the k-th largest normalised score. Returns (masks, k).

    All scores 0 (nothing reaches the loss) cannot rank anything: a NetcompressError."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()]) if scores else torch.zeros(0)
    n = flat.numel()
    k = int(n * keep_ratio)
    if k <= 0:
        return {name: torch.zeros_like(s) for name, s in scores.items()}, 0
    norm = flat.sum()
    if not torch.isfinite(norm) or float(norm) <= 0:
        raise NetcompressError(f"the connection sensitivities of layers {', '.join(scores)} are all 0 "
                               f"(or not finite: sum {float(norm)}), so they cannot rank the weights")
    thr = torch.topk(flat / norm, k, sorted=True).values[-1]
    return {name: ((s / norm) >= thr).to(s.dtype) for name, s in scores.items()}, k


def apply_masks(net: "Net", masks: dict[str, torch.Tensor], zero_pruned: bool = True) -> None:
    """Multiply each layer's weight mask by `masks[layer]`; with `zero_pruned`, the raw weights of
    pruned entries become 0 (SNIP's and INRIA's pruned weights are 0)."""
    with torch.no_grad():
        for name, m in masks.items():
            layer = net.layer(name)
            layer.weight_mask.mul_(m.to(layer.weight_mask.dtype))
            if zero_pruned:
                layer.weight.masked_fill_(layer.weight_mask == 0, 0.0)


def iterative_keep(keep_ratio: float, min_ratio: float, grown_at: int, prune_epochs: Sequence[int],
                   epoch: int) -> float | None:
    """ITERATIVE's keep ratio of a block grown at epoch `grown_at`, at prune epoch `epoch`
    (None: the block is not grown yet)."""
    if grown_at > epoch:
        return None
    steps = sum(1 for p in prune_epochs if grown_at <= p <= epoch) - 1
    return max(keep_ratio ** (max(steps, 0) + 1), min_ratio)


# ----------------------------------------------------------------------------------------------
# snip_schedule
# ----------------------------------------------------------------------------------------------

class SnipSchedule(TrainingCallback):
    """The solver field `snip_schedule` (see the module docstring)."""

    def __init__(self, param: pb.SnipScheduleParameter, growth: pb.GrowthParameter | None,
                 source: str = "<solver>"):
        P = pb.SnipScheduleParameter
        self.source = source
        self.epochs = [int(e) for e in param.epoch]
        if not self.epochs or any(e < 1 for e in self.epochs) or \
                any(b <= a for a, b in zip(self.epochs, self.epochs[1:])):
            raise NetcompressError(f"{source}: snip_schedule.epoch must list increasing 1-based epochs, got "
                                   f"{self.epochs or 'none'}")
        self.policy = int(param.policy)
        self.policy_name = P.Policy.Name(self.policy)
        self.keep = [_decimal(v) for v in param.keep_ratio]
        self.min = [_decimal(v) for v in param.min_ratio]
        if not self.keep:
            raise NetcompressError(f"{source}: snip_schedule needs keep_ratio")
        if any(not 0 <= v <= 1 for v in self.keep + self.min):
            raise NetcompressError(f"{source}: snip_schedule keep_ratio and min_ratio must lie in [0, 1], got "
                                   f"keep_ratio {self.keep}, min_ratio {self.min}")
        if self.policy == P.NORMAL and len(self.keep) != 1:
            raise NetcompressError(f"{source}: snip_schedule policy NORMAL takes one keep_ratio (a global "
                                   f"top-k), got {len(self.keep)}")
        if self.policy == P.SKIP_LAYER and len(self.keep) != 1 and len(self.keep) < len(self.epochs):
            raise NetcompressError(f"{source}: snip_schedule policy SKIP_LAYER prunes block j at the j-th "
                                   f"epoch with keep_ratio[j]: {len(self.epochs)} epochs need {len(self.epochs)} "
                                   f"keep_ratio values (or one), got {len(self.keep)}")
        self.batch_size = int(param.batch_size)
        if self.batch_size < 1:
            raise NetcompressError(f"{source}: snip_schedule.batch_size must be positive, got {self.batch_size}")
        if param.HasField("reinit"):
            self.reinit = param.reinit == P.XAVIER_NORMAL
        else:
            self.reinit = self.policy == P.NORMAL  # as the sources (Q5)
        self.prefix = growth.stage_prefix if growth is not None else "grow"
        self.grown_at = [1] + ([int(e) for e in growth.epoch] if growth is not None else [])
        self.batches = 1
        #: One record per block pruned: epoch, block, keep, weights, kept (for logs and tests).
        self.events: list[dict] = []

    def _ratio(self, values: list[float], i: int, default: float, field: str = "keep_ratio") -> float:
        """Block i's value: one value serves every block, else one per block."""
        if not values:
            return default
        if len(values) == 1:
            return values[0]
        if i >= len(values):
            raise NetcompressError(f"{self.source}: snip_schedule.{field} has {len(values)} values (one per "
                                   f"block), but the net has block {i}")
        return values[i]

    def attach(self, solver: "Solver") -> None:
        solver.require_epoch_iters("snip_schedule")
        size = None
        for _, layer in solver.net.named_layers():
            size = layer.epoch_size()
            if size is not None:
                break
        if size is None:
            raise NetcompressError(f"{self.source}: snip_schedule scores batches of the TRAIN data layer, and "
                                   f"the train net '{solver.net.name}' has none")
        per_batch = size[1]
        if self.batch_size % per_batch:
            raise NetcompressError(f"{self.source}: snip_schedule.batch_size ({self.batch_size}) must be a "
                                   f"multiple of the TRAIN data layer's batch_size ({per_batch}): the scores use "
                                   "whole batches")
        self.batches = self.batch_size // per_batch

    def on_start(self, solver: "Solver") -> None:
        if solver.iter == 0 and solver.restored_state is None and 1 in self.epochs:
            self.prune(solver, 1)

    def on_epoch_end(self, solver: "Solver", epoch: int) -> None:
        if epoch + 1 in self.epochs:
            self.prune(solver, epoch + 1)

    def _plan(self, solver: "Solver", epoch: int) -> list[tuple[int | None, list[str], float]]:
        """(block or None for all, layers, keep) per scope pruned at `epoch`."""
        P = pb.SnipScheduleParameter
        blocks: dict[int, list[str]] = {}
        for name, layer in prunable_layers(solver.net):
            blocks.setdefault(layer_stage(layer.layer_param, self.prefix), []).append(name)
        if not blocks:
            raise NetcompressError(f"{self.source}: snip_schedule prunes MaskedConvolution / MaskedInnerProduct "
                                   f"layers, and the train net '{solver.net.name}' has none at epoch {epoch}")
        j = self.epochs.index(epoch)
        if self.policy == P.SKIP_LAYER:
            if j not in blocks:
                log.warning("snip_schedule: epoch %d is prune epoch %d (SKIP_LAYER prunes block %d), but block "
                            "%d has no masked layer in the net yet; nothing pruned", epoch, j + 1, j, j)
                return []
            return [(j, blocks[j], self._ratio(self.keep, j, 1.0))]
        if self.policy == P.NORMAL:
            return [(None, [n for b in sorted(blocks) for n in blocks[b]], self.keep[0])]
        plan = []
        for i in sorted(blocks):
            grown = self.grown_at[i] if i < len(self.grown_at) else 1
            keep = iterative_keep(self._ratio(self.keep, i, 1.0), self._ratio(self.min, i, 0.0, "min_ratio"), grown,
                                  self.epochs, epoch)
            if keep is not None:
                plan.append((i, blocks[i], keep))
        return plan

    def prune(self, solver: "Solver", epoch: int) -> None:
        net = solver.net
        plan = self._plan(solver, epoch)
        if not plan:
            return
        layers = [n for _, names, _ in plan for n in names]
        gen = net.ctx.named_generator(SNIP_GENERATOR) if self.reinit else None
        scores = connection_sensitivity(net, layers, self.batches, reinit=gen)
        chosen = [(block, names, keep, *keep_masks({n: scores[n] for n in names}, keep)) for block, names, keep in plan]
        self._broadcast(solver, [m for *_, masks, _ in chosen for m in masks.values()])
        for block, names, keep, masks, k in chosen:
            apply_masks(net, masks)
            total = sum(net.layer(n).weight_mask.numel() for n in names)
            kept = sum(int((net.layer(n).weight_mask == 1).sum()) for n in names)
            self.events.append({"epoch": epoch, "block": block, "keep": keep, "weights": total, "k": k,
                                "kept": kept, "layers": list(names)})
            if solver.root:
                where = "every block" if block is None else f"block {block}"
                log.info("snip_schedule: epoch %d (%s): %s keeps %d/%d weights (keep %.6g%s)", epoch,
                         self.policy_name, where, kept, total, keep, ", Xavier-scored" if self.reinit else "")

    @staticmethod
    def _broadcast(solver: "Solver", masks: list[torch.Tensor]) -> None:
        """Rank 0's new masks (ranks score different shards of the data)."""
        if solver.world_size <= 1:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for m in masks:
                dist.broadcast(m, src=0)


@register_callback
def _snip_schedule(solver: "Solver") -> TrainingCallback | None:
    if not solver.param.HasField("snip_schedule"):
        return None
    growth = solver.param.growth if solver.param.HasField("growth") else None
    return SnipSchedule(solver.param.snip_schedule, growth, solver.source)
