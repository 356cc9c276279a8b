"""How the Solver runs an iteration on its device: eager, deferred, or replayed as a CUDA graph (issue 20).

- eager: Caffe's loop as written. Every iteration reads its loss on the host, checks that it is finite and
  then applies the update. On a GPU that read is a device synchronization per iteration; on the CPU it costs
  nothing, so eager is the CPU's mode.
- deferred: the loss stays on the device. Each iteration writes its loss into a device buffer and folds
  `isfinite(loss)` into a device flag `ok`; the update is computed so that it changes nothing (weights,
  history) once `ok` is false. The host reads the buffer only where it needs the values: display
  iterations, tests, epoch ends, snapshots, a full buffer (every `LOSS_SLOTS` iterations) and the end of
  `Solver.step`. There the solver replays Caffe's smoothed loss over every iteration in order, so the
  display shows the eager value, and at the first non-finite loss it raises `NonFiniteLossError` naming that
  iteration: the weights and history are those before its update, and no snapshot was written after it.
  What still runs between that iteration and the read: the layers' own hooks (a mask update, a log line of
  theirs) and the data layers, which advance; the weights, the history and every file stay as they were.
- graph: deferred, with forward, backward, the loss bookkeeping and the update captured once in a CUDA graph
  (after `GRAPH_WARMUP` deferred iterations) and replayed at every later iteration. The learning-rate policy,
  the callbacks' `before_iteration` / `before_forward` hooks (the layers' per-iteration state changes, such
  as mask updates whose schedule the host decides, e.g. from a CPU generator) and the data layers run eagerly
  before each replay; the data layers' tops are copied into the graph's inputs and the rate into a device
  scalar. Applies to CUDA nets whose layers and callbacks declare themselves graph-safe
  (`Layer.graph_safe`, `TrainingCallback.graph_safe`) and whose solver is one the deferred update implements.

The recipe option `step_mode` (`netcompress train --step-mode`, or `Solver(options={"step_mode": ...})`)
chooses: `auto` (the default: graph where it applies on CUDA, else deferred where it applies, else eager; on
the CPU eager), `eager`, `deferred` (no graphs; on the CPU too, where it tests the deferred logic) or `graph`
(an error where it does not apply). Unless the CPU runs eager by default, the solver logs one line naming
the mode and why.

Deferred update (SGD, both momentum forms), per learnable parameter, with `r` its local rate as a device
scalar of the parameter's dtype and `m` the momentum:

    g <- g / iter_size; g <- g + decay * w (or * sign(w))      as the eager update
    s <- ok ? r*g : -0.0                                        (LR_OUTSIDE: ok ? g : -0.0)
    h <- (ok ? m : 1) * h + s; h <- h * (mask*ok + (1-ok))      the history, frozen entries kept at 0
    g <- h (LR_OUTSIDE: h * r); w <- w - g * ok

Each product and sum is rounded once, as in the fused CPU op (`sgd_momentum_update_`, no contraction), so
the deferred mode gives the eager mode's weights bit for bit on the CPU; adding -0.0 and multiplying by 1
change no bits, so a non-finite iteration leaves h and w exactly as they were. Lists of tensors go through
`torch._foreach_*` (one launch per list on CUDA; a loop of the same ATen ops on the CPU).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import NetcompressError
from ..log import get_logger
from ..options import register_option

if TYPE_CHECKING:  # pragma: no cover
    from .solver import Solver

__all__ = ["STEP_MODES", "LOSS_SLOTS", "GRAPH_WARMUP", "choose_step_mode", "deferred_refusal",
           "graph_refusal", "DeviceLoop"]

log = get_logger("solver")

STEP_MODES = ("auto", "eager", "deferred", "graph")
#: Losses a deferred run keeps on the device between host reads (a read every LOSS_SLOTS iterations at least).
LOSS_SLOTS = 1024
#: Deferred iterations before the graph is captured (cuDNN/cuBLAS set-up, first-iteration state changes).
GRAPH_WARMUP = 3

register_option(
    "step_mode", "--step-mode", default="auto", choices=STEP_MODES,
    help="how the solver runs an iteration: auto (default: a CUDA graph of the whole iteration where it applies "
         "on a GPU, else deferred loss reads there; eager on the CPU), eager (read each loss on the host), "
         "deferred (read losses only at display/test/snapshot points; no graph) or graph (an error where it does "
         "not apply)")

_DEFERRED_TYPES = ("SGD",)
_GRAPH_HOOKS = ("before_backward", "after_backward", "reduce_loss", "before_update")


def _overrides(obj, name: str) -> bool:
    from .callbacks import TrainingCallback

    return getattr(type(obj), name) is not getattr(TrainingCallback, name)


def deferred_refusal(solver: "Solver") -> str | None:
    """Why the deferred update cannot run this solver (None: it can)."""
    sp = solver.param
    if solver.type not in _DEFERRED_TYPES:
        return f"the deferred update implements {', '.join(_DEFERRED_TYPES)}, not type {solver.type}"
    if sp.clip_gradients >= 0:
        return "clip_gradients reads the gradient norm on the host"
    for cb in solver.callbacks:
        if _overrides(cb, "reduce_loss"):
            return f"the training callback {type(cb).__name__} reads each iteration's loss on the host (reduce_loss)"
    for e in solver.params:
        if e.learnable and e.tensor.dtype not in (torch.float32, torch.float64):
            return f"parameter {e.key} is {e.tensor.dtype} (the deferred update is exact for float32/float64)"
        mask = solver.net.param_layer(e).update_mask(e.index) if e.learnable else None
        if mask is not None and mask.dtype != e.tensor.dtype:
            return f"parameter {e.key} has a {mask.dtype} update mask"
    return None


def graph_refusal(solver: "Solver", device: bool = True) -> str | None:
    """Why a CUDA graph cannot capture this solver's iteration (None: it can); `device=False` skips the
    check that the net is on a CUDA device (the rest is the same anywhere)."""
    if device and solver.device.type != "cuda":
        return f"CUDA graphs need a CUDA device, the net is on {solver.device}"
    why = deferred_refusal(solver)
    if why:
        return why
    if solver.param.iter_size != 1:
        return f"iter_size is {solver.param.iter_size} (the gradient hooks run between backward passes)"
    if solver.param.debug_info:
        return "debug_info logs every layer's blobs from the host, which a replayed graph does not run"
    for _, layer in solver.net.named_layers():
        why = layer.graph_refusal()
        if why:
            return why
    for cb in solver.callbacks:
        hooks = [h for h in _GRAPH_HOOKS if _overrides(cb, h)]
        if hooks and not cb.graph_safe:
            return (f"the training callback {type(cb).__name__} overrides {', '.join(hooks)} and does not declare "
                    "itself graph-safe")
    return None


def choose_step_mode(solver: "Solver") -> tuple[str, str]:
    """(mode, why): the step mode the solver's `step_mode` option asks for, resolved for this solver."""
    asked = solver.options.get("step_mode", "auto")
    if asked not in STEP_MODES:
        raise NetcompressError(f"step_mode must be one of {', '.join(STEP_MODES)}, got {asked!r}")
    if asked == "eager":
        return "eager", "asked for (step_mode eager)"
    if asked == "graph":
        why = graph_refusal(solver)
        if why:
            raise NetcompressError(f"{solver.source}: step_mode graph: cannot capture the iteration in a CUDA "
                                   f"graph: {why}")
        return "graph", "asked for (step_mode graph)"
    why_deferred = deferred_refusal(solver)
    if asked == "deferred":
        if why_deferred:
            raise NetcompressError(f"{solver.source}: step_mode deferred: {why_deferred}")
        return "deferred", "asked for (step_mode deferred)"
    # auto
    if solver.device.type == "cpu":
        return "eager", "the CPU reads each loss at no cost"
    if solver.param.debug_info:
        return "eager", "debug_info reads every layer's blobs on the host at display iterations"
    why_graph = graph_refusal(solver)
    if not why_graph:
        return "graph", "the default where it applies (step_mode deferred turns graphs off)"
    if not why_deferred:
        return "deferred", f"no CUDA graph: {why_graph}"
    return "eager", f"no deferred update: {why_deferred}"


class DeviceLoop:
    """The device-side state of the deferred and graphed modes: the finite flag, the loss buffer, the rate
    scalars, the update, and (graph mode) the captured graph with its static inputs."""

    def __init__(self, solver: "Solver", graphed: bool):
        sp = solver.param
        self.solver = solver
        self.graphed = graphed
        self.device = solver.device
        dev = self.device
        self.iter_size = int(sp.iter_size)
        self.ok = torch.ones((), dtype=torch.bool, device=dev)   # false from a non-finite loss until `read`
        self.losses: torch.Tensor | None = None                   # LOSS_SLOTS losses, allocated at first use
        self.slot = torch.zeros(1, dtype=torch.int64, device=dev)  # next free entry of `losses`
        self.pending: list[int] = []                              # the iterations whose losses wait there
        if sp.regularization_type not in ("L1", "L2"):
            raise NetcompressError(f"Unknown regularization type: \"{sp.regularization_type}\" (use L1 or L2)")
        self.l1 = sp.regularization_type == "L1"
        from ..proto import caffe_pb2 as pb
        from .updates import RATE_IN_HISTORY

        self.lr_outside = sp.momentum_form == pb.SolverParameter.LR_OUTSIDE and solver.type in RATE_IN_HISTORY
        self.momentum = float(sp.momentum)
        self.weight_decay = float(sp.weight_decay)
        # Per (dtype, k): the local rate rate*lr_mult of the k-th distinct lr_mult of that dtype's parameters, as a
        # device scalar refilled every iteration (`_rate_mults` holds the lr_mult). Keyed by position, not by
        # value, so a callback that changes lr_mult per iteration (a recipe's schedule) reuses the same scalars.
        self._rates: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        self._rate_mults: dict[tuple[torch.dtype, int], float] = {}
        self.nets_changed = False  # Solver.rebuild_nets replaced the nets: check the graph again
        self._consts: dict[torch.dtype, tuple[torch.Tensor, ...]] = {}
        # graph mode
        self.warm = 0                                  # deferred iterations run so far
        self.graph = None
        self._static: dict[str, torch.Tensor] = {}     # the graph's inputs (the data layers' tops)
        self._seen: dict[str, tuple[torch.Tensor, int]] = {}  # the tensor last copied there, and its version
        self._blobs: dict[str, torch.Tensor] = {}      # the net's blobs and loss as the graph writes them
        self._loss: torch.Tensor | None = None
        self._captured: list[torch.Tensor] = []        # parameters, histories and masks the graph reads
        self._side = None                              # the warm-up iterations' CUDA stream

    # -- losses ----------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        return len(self.pending) >= LOSS_SLOTS

    def record_loss(self, loss: torch.Tensor) -> None:
        """Device work only: fold isfinite(loss) into `ok`, write loss at the next slot (see `read`)."""
        with torch.no_grad():
            if self.losses is None:
                self.losses = torch.zeros(LOSS_SLOTS, dtype=loss.dtype, device=self.device)
            self.ok.logical_and_(torch.isfinite(loss))
            self.losses.index_copy_(0, self.slot, loss.reshape(1).to(self.losses.dtype))
            self.slot.add_(1)

    def read(self) -> list[tuple[int, float]]:
        """(iteration, loss summed over iter_size) of every iteration since the last read, in order: the
        one host read (a device sync on a GPU). The caller stops at the first non-finite loss, so the finite
        flag starts afresh (a caller that goes on training after the error trains again)."""
        if not self.pending:
            return []
        values = self.losses[:len(self.pending)].tolist()
        self.slot.zero_()
        if not all(math.isfinite(v) for v in values):
            self.ok.fill_(True)
        out = list(zip(self.pending, values))
        self.pending = []
        return out

    # -- the update --------------------------------------------------------------------------
    def set_rate(self, rate: float) -> None:
        """Fill the local-rate scalars for this iteration's update (host values, no sync): before a replay."""
        for key, t in self._rates.items():
            t.fill_(rate * self._rate_mults[key])

    def _rate(self, dtype: torch.dtype, k: int, lr_mult: float, rate: float, fill: bool) -> torch.Tensor:
        key = (dtype, k)
        t = self._rates.get(key)
        if t is None:
            t = self._rates[key] = torch.full((), rate * lr_mult, dtype=dtype, device=self.device)
        elif fill:
            t.fill_(rate * lr_mult)
        self._rate_mults[key] = lr_mult
        return t

    def _constants(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(-0.0, 1, momentum, ok ? momentum : 1, float(ok)) as device scalars of `dtype`."""
        c = self._consts.get(dtype)
        if c is None:
            new = lambda v: torch.full((), v, dtype=dtype, device=self.device)  # noqa: E731
            c = self._consts[dtype] = (new(-0.0), new(1.0), new(self.momentum), new(self.momentum), new(1.0))
        return c

    def update(self, grads: list[torch.Tensor | None], rate: float, fill: bool = True) -> None:
        """The deferred SGD update (see the module docstring): device work only, no host read. The rate
        scalars are filled with `rate` here when `fill`; inside a graph (fill False) `set_rate` fills them
        before each replay (a captured fill would replay the capture's rate)."""
        s = self.solver
        groups: dict[torch.dtype, list[int]] = {}
        for i, g in enumerate(grads):
            if g is not None:
                groups.setdefault(g.dtype, []).append(i)
        with torch.no_grad():
            for dtype, idx in groups.items():
                self._update_group(s, idx, grads, rate, dtype, fill)

    def _update_group(self, s: "Solver", idx: list[int], grads, rate: float, dtype: torch.dtype,
                      fill: bool) -> None:
        neg0, one, mom, mom_ok, ok_f = self._constants(dtype)
        torch.where(self.ok, mom, one, out=mom_ok)
        ok_f.copy_(self.ok)
        gs = [grads[i] for i in idx]
        ws = [s.params[i].tensor for i in idx]
        hs = [s.history[i][0] for i in idx]
        if self.iter_size > 1:
            torch._foreach_mul_(gs, 1.0 / self.iter_size)
        by_decay: dict[float, list[int]] = {}
        by_rate: dict[float, list[int]] = {}
        for k, i in enumerate(idx):
            e = s.params[i]
            d = self.weight_decay * e.decay_mult
            if d:
                by_decay.setdefault(d, []).append(k)
            by_rate.setdefault(float(e.lr_mult), []).append(k)
        for d, ks in by_decay.items():
            src = [ws[k] for k in ks]
            torch._foreach_add_([gs[k] for k in ks], torch._foreach_sign(src) if self.l1 else src, alpha=d)
        rates = [(self._rate(dtype, j, lr_mult, rate, fill), ks) for j, (lr_mult, ks) in enumerate(by_rate.items())]
        if not self.lr_outside:
            for r, ks in rates:
                torch._foreach_mul_([gs[k] for k in ks], r)
        for g in gs:  # a non-finite iteration adds -0.0 to the history: no bit changes
            torch.where(self.ok, g, neg0, out=g)
        torch._foreach_mul_(hs, mom_ok)
        torch._foreach_add_(hs, gs)
        masked = [(k, s.net.param_layer(s.params[i]).update_mask(s.params[i].index)) for k, i in enumerate(idx)]
        masked = [(k, m) for k, m in masked if m is not None]
        if masked:  # frozen entries: zero history (and so a zero update); h * (mask*ok + (1-ok)), exact
            not_ok = torch.sub(one, ok_f)
            eff = torch._foreach_mul([m for _, m in masked], ok_f)
            # The explicit overload: given a 0-d tensor, `torch._foreach_add_` picks the Scalar one and reads the
            # value on the host (a device sync, which a CUDA graph's capture refuses).
            torch.ops.aten._foreach_add_.Tensor(eff, not_ok)
            torch._foreach_mul_([hs[k] for k, _ in masked], eff)
        torch._foreach_copy_(gs, hs)  # Caffe's diff holds the update
        if self.lr_outside:
            for r, ks in rates:
                torch._foreach_mul_([gs[k] for k in ks], r)
        torch._foreach_sub_(ws, torch._foreach_mul(gs, ok_f))

    # -- the graph -----------------------------------------------------------------------------
    def feed(self, tops: dict[str, torch.Tensor]) -> None:
        """Copy the data layers' tops of this iteration into the graph's inputs (skipped for a tensor the
        graph already holds unchanged, e.g. an Input layer's value fed once)."""
        for t, v in tops.items():
            seen = self._seen.get(t)
            if seen is not None and seen[0] is v and seen[1] == v._version:
                continue
            self._static[t].copy_(v)
            self._seen[t] = (v, v._version)

    def capture(self, tops: dict[str, torch.Tensor], body: Callable[[], None]) -> None:
        """Capture `body` (forward from the static inputs, backward, record_loss, update) in a CUDA graph.
        Nothing runs: the caller replays it for this iteration. Raises what the capture raised."""
        net = self.solver.net
        self._static = {t: v.detach().clone() for t, v in tops.items()}
        self._seen = {t: (v, v._version) for t, v in tops.items()}
        net.zero_grad(set_to_none=True)
        self.graph = _capture(body)
        self._blobs = dict(net.blobs)
        self._loss = net.loss
        self._captured = self._tensors_read()

    def _tensors_read(self) -> list[torch.Tensor]:
        """The parameters, histories and every layer's own parameters and buffers (masks), in a fixed order."""
        s = self.solver
        out = [e.tensor for e in s.params] + [h for hs in s.history for h in hs]
        for _, layer in s.net.named_layers():
            out += layer._parameters.values()
            out += layer._buffers.values()
        return out

    def still_valid(self) -> bool:
        """Whether the net still holds the tensors the graph captured (a replaced parameter or buffer, e.g.
        by a caller's `setattr`, needs a new capture)."""
        now = self._tensors_read()
        return len(now) == len(self._captured) and all(a is b for a, b in zip(now, self._captured))

    def drop_graph(self) -> None:
        self.graph = None
        self.warm = 0
        self._static, self._seen, self._blobs, self._loss, self._captured = {}, {}, {}, None, []

    def replay(self) -> None:
        net = self.solver.net
        self.graph.replay()
        if net.loss is not self._loss:  # an eager forward since (the final display) replaced the net's blobs
            net.blobs.clear()
            net.blobs.update(self._blobs)
            net.loss = self._loss

    def side_stream_context(self):
        """Warm-up iterations run on a side stream (one per loop), as PyTorch's CUDA-graph recipe does."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        return _SideStream(self._side)


def _capture(body: Callable[[], None]):
    """`body` captured in a new CUDA graph (nothing runs). A module function, so that the CPU tests can stand
    in a graph that replays by running the body again (tests/solvers/test_step_modes.py)."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: a data layer's prefetch thread may pin host memory meanwhile (it never touches this stream).
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph


class _SideStream:
    """Run on `stream` after the current stream's work; the current stream then waits for it."""

    def __init__(self, stream):
        self.stream = stream

    def __enter__(self):
        self.stream.wait_stream(torch.cuda.current_stream())
        self.ctx = torch.cuda.stream(self.stream)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        torch.cuda.current_stream().wait_stream(self.stream)
        return False

