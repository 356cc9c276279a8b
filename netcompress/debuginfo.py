"""Caffe's `debug_info`: the mean absolute value of every blob, layer by layer, in Caffe's log lines.

With `debug_info: true` in a solver (or a NetParameter), Caffe's Net logs after each layer's forward
`    [Forward] Layer L, top blob T data: M` for its tops and `... param blob P data: M` for its blobs (P the
ParamSpec's name, else the blob's index), after each backward `    [Backward] Layer L, bottom blob B diff: M` for
the bottoms that get a diff and `... param blob I diff: M` for the blobs with lr_mult != 0 (all under
force_backward; a DNS/INQ mask too, with a zero diff, as in the reference fork), and after the whole
backward, as an ERROR line, `    [Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)`.
The solver turns it on for the train net on display iterations only, and for the test nets always (their
forwards). The Split layers Caffe inserts are in the lines too: a Split's tops carry its bottom's data, each
consumer's bottom is the Split top it reads (its own part of the gradient), and the Split's bottom gets the sum.

netcompress's autograd backward runs as one call: the gradients are caught by hooks on per-consumer views of
each bottom (the Split tops' counterpart) and on each split blob, and the backward lines are written after it,
in Caffe's order (last layer first). M is the mean |x| (`asum / count`), printed as C++ streams a float.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch

from .log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from .net import Net

__all__ = ["abs_mean", "forward_params", "log_forward", "log_backward", "backward_params", "DebugRecorder"]

log = get_logger("net")


def abs_mean(t: torch.Tensor | None, count: int | None = None) -> float:
    """Caffe's `asum / count` (0 for a missing gradient; NaN for an empty blob, as Caffe's 0 / 0)."""
    n = count if count is not None else (t.numel() if t is not None else 0)
    if t is None:
        return 0.0 if n else math.nan
    if n == 0:
        return math.nan
    return float(t.detach().abs().sum(dtype=torch.float64)) / n


# Values print with %g: C++'s default ostream, 6 significant digits.


def forward_params(layer) -> list[tuple[str, torch.Tensor]]:
    """A layer's blobs with Caffe's param_display_names_: the ParamSpec's name, else the blob's index."""
    specs = layer.layer_param.param
    return [(specs[i].name if i < len(specs) and specs[i].name else str(i), b) for i, b in enumerate(layer.blobs())]


def log_forward(layer: str, tops: Sequence[tuple[str, torch.Tensor]],
                params: Sequence[tuple[str, torch.Tensor]]) -> None:
    """Net::ForwardDebugInfo's lines of one layer."""
    for name, t in tops:
        log.info("    [Forward] Layer %s, top blob %s data: %g", layer, name, abs_mean(t))
    for shown, t in params:
        log.info("    [Forward] Layer %s, param blob %s data: %g", layer, shown, abs_mean(t))


def log_backward(layer: str, bottoms: Sequence[tuple[str, float]],
                 params: Sequence[tuple[int, torch.Tensor]]) -> None:
    """Net::BackwardDebugInfo's lines of one layer: its bottoms' mean |diff|, its blobs' (lr_mult != 0) mean
    |grad|."""
    for name, value in bottoms:
        log.info("    [Backward] Layer %s, bottom blob %s diff: %g", layer, name, value)
    for index, p in params:
        log.info("    [Backward] Layer %s, param blob %d diff: %g", layer, index, abs_mean(p.grad, p.numel()))


def backward_params(layer, force_backward: bool = False) -> list[tuple[int, torch.Tensor]]:
    """A layer's blobs that Caffe's BackwardDebugInfo lists, with their indices: those with
    param_propagate_down, i.e. the layer's ParamSpec lr_mult != 0 (1 when not given), or every blob under
    force_backward. A blob that takes no gradient here (a DNS/INQ mask, which the reference fork holds as
    a blob with the default ParamSpec) is listed all the same, with Caffe's zero diff."""
    specs = layer.layer_param.param
    return [(i, b) for i, b in enumerate(layer.blobs())
            if force_backward or (specs[i].lr_mult if i < len(specs) else 1.0) != 0]


class DebugRecorder:
    """One forward/backward's debug lines for `net` (see the module docstring)."""

    def __init__(self, net: "Net"):
        self.net = net
        self.bottom_diff: dict[tuple[int, int], float] = {}  # (graph index, bottom index) -> mean |diff|

    # -- forward ---------------------------------------------------------------------------
    def watch_bottoms(self, li: int, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Layer `li`'s inputs, each that gets a diff replaced by a view whose gradient is caught."""
        if not torch.is_grad_enabled():
            return list(xs)
        gi = self.net._graph_index[li]
        need = self.net.backward.bottom[gi]
        out = []
        for j, x in enumerate(xs):
            if j < len(need) and need[j] and isinstance(x, torch.Tensor) and x.requires_grad:
                x = x.view_as(x)
                x.register_hook(self._catch(gi, j))
            out.append(x)
        return out

    def _catch(self, gi: int, j: int):
        def hook(grad: torch.Tensor) -> None:
            self.bottom_diff[(gi, j)] = abs_mean(grad)
        return hook

    def forward(self, li: int, outs: Sequence[torch.Tensor]) -> None:
        """The lines of layer `li` after its forward, and of the Split layers after it."""
        net = self.net
        log_forward(net.layer_names[li], list(zip(net._tops[li], outs)), forward_params(net.layers[net._keys[li]]))
        for sp, gi in zip(net._splits.splits[li], net._split_graph_index[li]):
            blob = net.blobs[sp.bottom]
            log_forward(sp.name, [(t, blob) for t in sp.tops], [])
            if torch.is_grad_enabled() and blob.requires_grad and self.net.backward.bottom[gi][0]:
                blob.register_hook(self._catch(gi, 0))

    # -- backward --------------------------------------------------------------------------
    def backward(self) -> None:
        """The backward lines, after the net's backward, in Caffe's order; then the norms of all params."""
        net = self.net
        graph, needs = net._graph, net.backward
        core = {gi: li for li, gi in enumerate(net._graph_index)}
        for gi in reversed(range(len(graph))):
            if not needs.layer[gi]:
                continue
            g = graph[gi]
            bottoms = [(b, self.bottom_diff.get((gi, j), 0.0)) for j, b in enumerate(g.bottoms)
                       if needs.bottom[gi][j]]
            li = core.get(gi)
            params = [] if li is None else backward_params(net.layers[net._keys[li]], net.param.force_backward)
            log_backward(g.name, bottoms, params)
        asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
        for entry in net.learnable_params():
            t = entry.tensor.detach()
            asum_data += float(t.abs().sum(dtype=torch.float64))
            sumsq_data += float(t.double().square().sum())
            grad = entry.tensor.grad if isinstance(entry.tensor, torch.nn.Parameter) else None
            if grad is not None:
                asum_diff += float(grad.abs().sum(dtype=torch.float64))
                sumsq_diff += float(grad.double().square().sum())
        log.error("    [Backward] All net params (data, diff): L1 norm = (%g, %g); L2 norm = (%g, %g)",
                  asum_data, asum_diff, math.sqrt(sumsq_data), math.sqrt(sumsq_diff))
        self.bottom_diff.clear()
