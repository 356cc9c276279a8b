"""The Caffe training loop: `Solver` (Caffe's Solver + SGDSolver family + the fork's LarsSGD).

Iteration order (reference-semantics 4.1), for iter from start to max_iter - 1:
  1. clear the parameter gradients;
  2. test if `test_interval` divides iter (and iter > 0 or test_initialization);
  3. tell the train net the iteration (masked layers use it);
  4. iter_size x forward/backward (the layers' state changes, e.g. mask updates, happen here);
  5. smoothed loss and display;
  6. ApplyUpdate: rate, clip, then per parameter normalize, regularize, update value; w -= update;
  7. ++iter; the epoch end when `epoch_iters` divides iter; snapshot if `snapshot` divides iter (or
     a signal asked for one); stop if asked.
Training callbacks (solvers/callbacks.py) run at fixed points of this loop; recipes and
data-parallel training are callbacks.
After the loop: a snapshot (snapshot_after_train, unless one was just taken), a final display
forward, and a final test if `test_interval` divides iter.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import tempfile
import time
from collections import deque
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from ..device import checked_device
from ..layers.base import INT_MAX
from ..errors import NetcompressError, describe_os_error
from ..log import LogReaderGone, StatusLine, get_logger, on_reader_gone
from ..net import Net, check_memory
from ..proto import caffe_pb2 as pb
from ..weights import copy_weights_list
from .callbacks import LayerHooks, TrainingCallback, callbacks_for
from .lr import check_lr_policy, learning_rate
from .state import SIDECAR_SUFFIX, load_state, save_state
from .step import GRAPH_WARMUP, DeviceLoop, choose_step_mode, graph_refusal
from .updates import RATE_IN_HISTORY, UPDATE_RULES, history_count

log = get_logger("solver")

__all__ = ["Solver", "NonFiniteLossError", "SIGNAL_EFFECTS"]

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


class NonFiniteLossError(NetcompressError):
    """Training produced a NaN or infinite loss; nothing after the last good snapshot was written."""


# Caffe logs every value of every net output at each display and test; an output of many values (a blob no layer
# consumes becomes one) made that millions of lines. The first this many of each output are logged, then one line.
MAX_LOGGED_OUTPUT_VALUES = 1000


def _log_output(net: str, name: str, values: list[float], count: int, weight: float, first: int) -> int:
    """Caffe's "<net> net output #k: name = v" lines of one output of `count` values (`values`: at least its first
    MAX_LOGGED_OUTPUT_VALUES), numbered from `first`: those, then one line for the rest. Returns the number after
    its last value's."""
    for k, v in enumerate(values[:MAX_LOGGED_OUTPUT_VALUES], first):
        extra = f" (* {weight:g} = {weight * v:g} loss)" if weight else ""
        log.info("    %s net output #%d: %s = %g%s", net, k, name, v, extra)
    rest = count - MAX_LOGGED_OUTPUT_VALUES
    if rest > 0:
        log.info("    %s net outputs #%d to #%d: %s: %d more values not logged (an output of %d values; Caffe logs "
                 "each; a blob no layer takes is a net output: a Silence layer takes it)", net,
                 first + MAX_LOGGED_OUTPUT_VALUES, first + count - 1, name, rest, count)
    return first + count


class Solver:
    """Train a net described by a solver prototxt, the way `caffe train` does.

    Args:
        param: a SolverParameter or the path of a solver prototxt.
        device: where the nets live ("cpu", "cuda:0", ...).
        weights: .caffemodel file(s) to fine-tune from (copied into the train and test nets).
        max_iter: overrides the solver's max_iter (the `--iterations` flag).
        sigint_effect, sighup_effect: "stop", "snapshot" or "none" (Caffe's flags).
        rank, world_size: for distributed runs (only rank 0 tests, logs and snapshots).
        callbacks: training callbacks to add (solvers/callbacks.py), e.g. data-parallel training;
            the layers' own hooks and the recipes' registered callbacks are added automatically.
        options: recipe options by name (`netcompress.options`), given to the nets' layers.
        verbose: log net set-up lines.
        source: the file a SolverParameter `param` was read from: errors name it, and a missing
            snapshot_prefix defaults to its name without extension (as for a path `param`).
        strict: a learnable layer that `weights` do not fill is an error (otherwise a warning).
    """

    def __init__(self, param: pb.SolverParameter | str, *, device: torch.device | str = "cpu",
                 weights: str | Sequence[str] | None = None, max_iter: int | None = None,
                 sigint_effect: str = "stop", sighup_effect: str = "snapshot",
                 rank: int = 0, world_size: int = 1, verbose: bool = True,
                 callbacks: Sequence[TrainingCallback] = (), options: dict | None = None,
                 source: str | None = None, strict: bool = False):
        if isinstance(param, (bytes, os.PathLike)):
            param = os.fsdecode(param)
        if not isinstance(param, (str, pb.SolverParameter)):
            raise TypeError(f"Solver takes a solver prototxt path or a SolverParameter, got {type(param).__name__}")
        if isinstance(param, str):
            source = param
        self.source = source or "<SolverParameter>"
        sp = ncio.read_solver(param) if isinstance(param, str) else param
        if max_iter is not None:
            sp.max_iter = max_iter
        if not sp.snapshot_prefix and source:
            # As later BVLC Caffe: the prefix defaults to the solver file's name.
            sp.snapshot_prefix = os.path.splitext(source)[0]
        self.param = sp
        self.device = checked_device(device, self.source)
        self.rank, self.world_size = rank, world_size
        self.root = rank == 0
        self.verbose = verbose and self.root
        self._started = False
        self._loop: DeviceLoop | None = None  # the deferred/graph state (solvers/step.py); None: eager
        self._loop_chosen = False
        self.step_mode: str | None = None      # "eager", "deferred" or "graph", once the first step chose it
        self._t_last, self._it_last = time.time(), 0
        self.restored_state: dict | None = None  # the sidecar tree of the last restore()
        for name, eff in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if eff not in SIGNAL_EFFECTS:
                raise NetcompressError(f"{name} must be one of {', '.join(SIGNAL_EFFECTS)}, got '{eff}'")
        self.sigint_effect, self.sighup_effect = sigint_effect, sighup_effect
        self._check_param()
        if self.root:
            self._check_snapshot_folder()
            log.info("Initializing solver from parameters: \n%s", ncio.text_proto(sp))
        seed = sp.random_seed if sp.random_seed >= 0 else None
        if seed is not None:
            torch.manual_seed(seed + rank)
            np.random.seed((seed + rank) % (2**32))
        self.seed = seed
        self.options = dict(options or {})
        self.stages: list[str] = []  # NetState stages added by rebuild_nets
        self.weights = weights
        self.net = self._make_train_net(seed)
        self.test_nets = self._make_test_nets(seed)
        check_memory([self.net, *self.test_nets])
        self.iter = 0
        self.current_step = 0
        self.type = sp.type
        self._rule, self._nhist, self._use_lr_mult = UPDATE_RULES[self.type]
        if self.type == "LarsSGD" and not (0 <= sp.local_gw_ratio < 1):
            raise NetcompressError(f"{self.source}: local_gw_ratio must satisfy 0 <= local_gw_ratio < 1, "
                                   f"got {sp.local_gw_ratio}")
        self.params: list = []
        self.history: list[list[torch.Tensor]] = []
        self._set_params()
        if self.root:
            self._check_snapshot_format()
        self.rate: float | None = None  # the current iteration's learning rate, once computed
        self._losses: deque[float] = deque()
        self.smoothed_loss = 0.0
        self._requested: str | None = None
        self._log_gone = False  # the log's reader went away during solve(): it stops, as for Ctrl-C
        self.last_snapshot: str | None = None
        self._last_snapshot_iter: int | None = None
        self.epoch_iters = self._epoch_iters()
        for net in [self.net, *self.test_nets]:
            net.ctx.epoch_iters = self.epoch_iters
        # Caffe's comma list, files checked first
        copy_weights_list(self.net, weights, verbose=self.root, strict=strict)
        self.callbacks: list[TrainingCallback] = []
        for cb in [LayerHooks(), *callbacks, *callbacks_for(self)]:
            self.add_callback(cb)
        if self.root:
            log.info("Solver scaffolding done.")

    def _set_params(self, old_history: dict[tuple[str, int], list[torch.Tensor]] | None = None) -> None:
        """`params` from the train net and their `history`: the tensors of `old_history` (by the
        ParamEntry's (module, index): its layer's k-th name and blob) where given and of the same shape, else
        zeros."""
        self.params = self.net.learnable_params()
        old_history = old_history or {}
        self.history = []
        for e in self.params:
            kept = old_history.get((e.module, e.index))
            if kept is None or any(h.shape != e.tensor.shape for h in kept):
                kept = [torch.zeros_like(e.tensor, memory_format=torch.contiguous_format)
                        for _ in range(self._nhist)]
            self.history.append(kept)
        for e in self.params:
            if e.learnable and e.lr_mult == 0:
                # Caffe computes no gradient for lr_mult 0 (param_need_backward false), also where the
                # net forces backward; a rule that ignores lr_mult (LarsSGD) still updates the blob.
                e.tensor.requires_grad_(not self._use_lr_mult)

    def add_callback(self, callback: TrainingCallback) -> TrainingCallback:
        """Add a training callback (after those already added); returns it."""
        keys = [c.state_key for c in self.callbacks if c.state_key]
        if callback.state_key and callback.state_key in keys:
            raise NetcompressError(f"two training callbacks save their state as '{callback.state_key}'")
        self.callbacks.append(callback)
        callback.attach(self)
        return callback

    def _epoch_iters(self) -> int:
        """Iterations per epoch: the solver's epoch_iters, else ceil(N / (batch_size x processes))
        of the first TRAIN data layer that knows its source's size, else 0 (no epochs)."""
        sp = self.param
        if sp.epoch_iters < 0:
            raise NetcompressError(f"{self.source}: epoch_iters must be >= 0 (0 derives it from the first "
                                   f"TRAIN data layer), got {sp.epoch_iters}")
        if sp.epoch_iters:
            return int(sp.epoch_iters)
        for _, layer in self.net.named_layers():
            size = layer.epoch_size()
            if size is not None:
                records, batch = size
                return max(1, -(-records // (batch * self.world_size)))
        return 0

    def require_epoch_iters(self, who: str) -> int:
        """`epoch_iters`, or an error naming `who` (the layer or field that needs epochs)."""
        if not self.epoch_iters:
            raise NetcompressError(
                f"{self.source}: {who} needs the epoch length, but epoch_iters is 0 and the train net has no "
                "data layer to derive it from (a Data, ImageData or HDF5Data layer); set epoch_iters")
        return self.epoch_iters

    @property
    def epoch(self) -> int:
        """The current 1-based epoch (0 when the solver has no epoch length)."""
        return self.iter // self.epoch_iters + 1 if self.epoch_iters else 0

    # -- set-up ----------------------------------------------------------------------------
    def _check_param(self) -> None:
        sp, src = self.param, self.source
        if sp.average_loss < 1:
            raise NetcompressError(f"{src}: average_loss should be at least 1, got {sp.average_loss}")
        if sp.iter_size < 1:
            raise NetcompressError(f"{src}: iter_size should be at least 1, got {sp.iter_size}")
        if sp.type not in UPDATE_RULES:
            try:
                history_count(sp.type)  # raises with the known types
            except NetcompressError as e:
                raise NetcompressError(f"{src}: {e}") from None
        if sp.regularization_type not in ("L1", "L2"):
            raise NetcompressError(f"{src}: Unknown regularization type: \"{sp.regularization_type}\" "
                                   "(use L1 or L2)")
        if sp.snapshot and not sp.snapshot_prefix:
            raise NetcompressError(f"{src}: In solver params, snapshot is specified but "
                                   "snapshot_prefix is not")
        if not sp.HasField("lr_policy"):
            raise NetcompressError(f"{src}: lr_policy is not set (e.g. lr_policy: \"fixed\")")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Every number the loop uses, in its meaningful range, before anything is built: Caffe
        takes most of them as they come (a negative base_lr trains nowhere, max_iter -1 trains
        nothing, momentum 2 diverges), or finds them only at the iteration that needs them."""
        sp, src = self.param, self.source

        def bad(field: str, expected: str, got) -> NetcompressError:
            return NetcompressError(f"{src}: {field} must be {expected}, got {got}")

        def finite(field: str) -> float:
            v = float(getattr(sp, field))
            if not math.isfinite(v):
                raise bad(field, "a finite number", v)
            return v

        if finite("base_lr") < 0:
            raise bad("base_lr", ">= 0", f"{sp.base_lr:g}")
        for field in ("gamma", "power", "clip_gradients", "rampup_lr", "local_gw_ratio"):
            finite(field)
        for field in ("weight_decay", "min_lr", "delta"):
            if finite(field) < 0:
                raise bad(field, ">= 0", f"{getattr(sp, field):g}")
        for field in ("momentum", "momentum2"):
            if not 0 <= finite(field) < 1:
                raise bad(field, "in [0, 1)", f"{getattr(sp, field):g}")
        if not 0 <= finite("rms_decay") <= 1:
            raise bad("rms_decay", "in [0, 1]", f"{sp.rms_decay:g}")
        for field in ("max_iter", "display", "snapshot", "test_interval", "rampup_interval", "stepsize"):
            if getattr(sp, field) < 0:
                raise bad(field, ">= 0", getattr(sp, field))
        for k, n in enumerate(sp.test_iter):
            if n <= 0:
                raise bad(f"test_iter[{k}]" if len(sp.test_iter) > 1 else "test_iter", "positive", n)
        from .callbacks import _import_recipes

        _import_recipes()  # recipes (and layer modules) may register lr policies
        check_lr_policy(sp, src)

    def _check_snapshot_folder(self) -> None:
        """Caffe's CheckSnapshotWritePermissions: a snapshot folder that cannot be written is an error
        now, not after hours of training."""
        sp = self.param
        if not sp.snapshot_prefix or not (sp.snapshot or sp.snapshot_after_train):
            return
        if "\0" in sp.snapshot_prefix:
            raise NetcompressError(f"{self.source}: snapshot_prefix cannot contain a NUL byte, got "
                                   f"{sp.snapshot_prefix!r}")
        folder = os.path.dirname(os.path.abspath(sp.snapshot_prefix))
        probe = folder
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)  # atomic_write creates the missing folders
        problem = ""
        if not os.path.isdir(probe):
            problem = f"{probe} is not a folder"
        elif probe == folder:
            try:
                fd, tmp = tempfile.mkstemp(prefix=".netcompress-probe-", dir=folder)
                os.close(fd)
                os.unlink(tmp)
            except OSError as e:
                problem = describe_os_error(e, f"write in {folder}")
        elif not os.access(probe, os.W_OK | os.X_OK):
            problem = f"cannot create {folder}: {probe} is not writable"
        longest = os.path.basename(self.snapshot_filename_at(max(sp.max_iter, 0), self._state_ext() + SIDECAR_SUFFIX))
        name_max = 255
        with contextlib.suppress(OSError, ValueError):
            name_max = os.pathconf(probe, "PC_NAME_MAX")
        if not problem and len(os.fsencode(longest)) > name_max:
            problem = (f"its file names (such as {longest[:40]}...) would have {len(os.fsencode(longest))} bytes, "
                       f"the file system allows {name_max}")
        if problem:
            raise NetcompressError(f"{self.source}: Cannot write to snapshot prefix '{sp.snapshot_prefix}': "
                                   f"{problem}. Make sure that the folder exists and is writable (or set "
                                   "snapshot: 0 and snapshot_after_train: false).")

    def _check_snapshot_format(self) -> None:
        """A binary snapshot (caffemodel or solver state) must stay under protobuf's 2 GiB, or it
        cannot be written (nor read by Caffe); an HDF5 one needs layer names HDF5 can hold: found now,
        not at the first snapshot after hours."""
        sp = self.param
        if not sp.snapshot_prefix or not (sp.snapshot or sp.snapshot_after_train):
            return
        if self._hdf5():
            bad = ncio.hdf5_name_problem(self.net.hdf5_layer_names())
            if bad:
                raise NetcompressError(f"{self.source}: snapshot_format: HDF5: {bad}")
            return
        values = sum(int(t.numel()) for layer in self.net.layers.values() for t in layer.blobs())
        model = 4 * values * (2 if sp.snapshot_diff else 1)
        state = 4 * sum(int(h.numel()) for hist in self.history for h in hist)
        big = max(model, state)
        if big > ncio.MAX_BINARY_PROTO_BYTES:
            what = "caffemodel" if model >= state else "solver state"
            raise NetcompressError(
                f"{self.source}: a binary snapshot of this net would have a {what} of {big / 2**30:.1f} GiB, "
                f"more than the {ncio.MAX_BINARY_PROTO_BYTES:,} bytes a binary proto may have (protobuf's limit; "
                "Caffe's snapshot fails there too): set snapshot_format: HDF5, which has none, or snapshot: 0 and "
                "snapshot_after_train: false")

    def _make_train_net(self, seed: int | None) -> Net:
        sp = self.param
        sources = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
        if len(sources) != 1:
            raise NetcompressError(f"{self.source}: exactly one of train_net_param, train_net, net_param "
                                   f"or net must be given, found {len(sources) or 'none'}"
                                   + (f" ({', '.join(sources)})" if sources else ""))
        field = sources[0]
        if field.endswith("_param"):
            if self.root:
                log.info("Creating training net specified in %s.", field)
            netp = getattr(sp, field)
            net_source = f"{self.source} ({field})"
        else:
            path = getattr(sp, field)
            if self.root:
                log.info("Creating training net from %s file: %s", field, path)
            netp = self._read_net_file(field, path)
            net_source = path
        state = pb.NetState(phase=pb.TRAIN)
        if netp.HasField("state"):
            state.MergeFrom(netp.state)
        state.MergeFrom(sp.train_state)
        state.phase = pb.TRAIN
        state.stage.extend(s for s in self.stages if s not in state.stage)
        return Net(netp, state=state, device=self.device, seed=seed, rank=self.rank,
                   world_size=self.world_size, verbose=self.verbose, options=self.options, source=net_source)

    def _read_net_file(self, field: str, path: str) -> pb.NetParameter:
        """The net a solver field names; a missing file is reported with the field it came from."""
        if not os.path.exists(path):
            raise NetcompressError(
                f"{self.source}: the solver's `{field}:` field names '{path}', which does not exist. Paths in a "
                f"solver resolve against the current directory ({os.getcwd()}), as in Caffe: run from the folder "
                "they are relative to (e.g. the repository root for examples/), or make the path absolute")
        return ncio.read_net(path)

    def _make_test_nets(self, seed: int | None) -> list[Net]:
        sp = self.param
        general = sp.HasField("net") or sp.HasField("net_param")
        n_param, n_file = len(sp.test_net_param), len(sp.test_net)
        n_general = (len(sp.test_iter) - n_param - n_file) if general else 0
        total = n_param + n_file + max(n_general, 0)
        # (Caffe's CHECK_GE with a general net: 2 test_net files and 1 test_iter made n_general -1, total 1,
        # and the second test net's run an IndexError)
        if len(sp.test_iter) != total and not (total == 0 and len(sp.test_iter) == 0):
            raise NetcompressError(f"{self.source}: test_iter must be specified for each test network "
                                   f"({total} test nets, {len(sp.test_iter)} test_iter values)")
        if total and sp.test_interval <= 0 and len(sp.test_iter):
            log.warning("test nets exist but test_interval is 0: they run only if asked") if self.root else None
        if len(sp.test_state) and len(sp.test_state) != total:
            raise NetcompressError(f"{self.source}: test_state must be unspecified or specified once "
                                   f"per test net ({total}), got {len(sp.test_state)}")
        if not self.root:
            return []
        specs: list[tuple[str, pb.NetParameter, str]] = []
        for p in sp.test_net_param:
            specs.append(("test_net_param", p, f"{self.source} (test_net_param)"))
        for f in sp.test_net:
            specs.append((f"test_net file: {f}", self._read_net_file("test_net", f), f))
        for _ in range(n_general):
            if sp.HasField("net_param"):
                specs.append(("net_param", sp.net_param, f"{self.source} (net_param)"))
            else:
                specs.append((f"net file: {sp.net}", self._read_net_file("net", sp.net), sp.net))
        nets = []
        for i, (where, netp, net_source) in enumerate(specs):
            log.info("Creating test net (#%d) specified by %s", i, where)
            state = pb.NetState(phase=pb.TEST)
            if netp.HasField("state"):
                state.MergeFrom(netp.state)
            if len(sp.test_state):
                state.MergeFrom(sp.test_state[i])
            state.phase = pb.TEST
            state.stage.extend(s for s in self.stages if s not in state.stage)
            tn = Net(netp, state=state, device=self.device, seed=seed, verbose=self.verbose,
                     options=self.options, rng=self.net.ctx.generator, source=net_source)
            tn.share_weights_with(self.net)
            nets.append(tn)
        return nets

    # -- structure changes -----------------------------------------------------------------
    def rebuild_nets(self, stages: Sequence[str]) -> None:
        """Re-create the train and test nets with NetState `stages` added to their configured state
        (the prototxt's `state`, `train_state` / `test_state`), carrying the training over.

        A layer present in the old and the new net (same name) keeps every blob (parameters, masks,
        statistics: the shapes must agree) and its `snapshot_state()` (data positions, generators,
        layer state); the nets' named generators carry over too. A layer new to the net starts as
        in a net built with these stages from the start: from the solver's `weights` files when
        they hold it, else from its fillers, drawn from a fresh stream seeded as at construction
        (a run with a random_seed therefore always grows the same values). `params` and `history`
        are remapped by (layer, blob index), new parameters getting zero history; the test nets
        share the new train net's weights; `epoch_iters` and the iteration are kept. Callbacks are
        told with `nets_rebuilt(solver)`.
        """
        stages = list(dict.fromkeys(stages))
        old_train, old_tests = self.net, self.test_nets
        old_history = {(e.module, e.index): h for e, h in zip(self.params, self.history)}
        self.stages = stages
        if self.root:
            log.info("Rebuilding the nets with stages %s", ", ".join(stages) or "(none)")
        self.net = self._make_train_net(self.seed)
        if self.weights:
            # (layers carried over from the old net below are not "unfilled": no report)
            copy_weights_list(self.net, self.weights, verbose=False, report=False)
        _carry_over(old_train, self.net)
        self.test_nets = self._make_test_nets(self.seed)
        for i, tn in enumerate(self.test_nets):
            if i < len(old_tests):
                # Layers of the train net share its (carried) blobs; test-only layers keep their own.
                _carry_over(old_tests[i], tn, blobs=lambda name: not self.net.has_layer(name))
        for net in [self.net, *self.test_nets]:
            net.ctx.epoch_iters = self.epoch_iters
        if hasattr(old_train, "iteration"):
            self.net.set_iteration(self.iter)
        for net in [old_train, *old_tests]:
            _close_data(net)
        self._set_params(old_history)
        if getattr(self, "_loop", None) is not None:
            self._loop.nets_changed = True
        for cb in getattr(self, "callbacks", []):
            cb.nets_rebuilt(self)

    # -- the loop --------------------------------------------------------------------------
    def solve(self, resume_file: str | None = None) -> None:
        """Train to max_iter (Caffe's Solver::Solve), resuming from a .solverstate if given."""
        sp = self.param
        if not self.net.loss_weights:  # even with max_iter 0, "Iteration 0, loss = 0" would mislead
            zeroed = [layer.name for layer in self.net.layers.values() if getattr(layer, "is_loss", False)]
            why = ("; it has no layers at all" if not self.net.layer_names else
                   f"; its loss layers ({', '.join(zeroed)}) all have loss_weight: 0" if zeroed else "")
            raise NetcompressError(f"{self.net.source}: the TRAIN net has no loss (no *Loss layer and no "
                                   f"loss_weight{why}): nothing to train")
        if self.root:
            log.info("Solving %s", self.net.name)
            log.info("Learning Rate Policy: %s", sp.lr_policy)
        if resume_file:
            if self.root:
                log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self._requested = None
        self._log_gone = False
        start = self.iter
        status = StatusLine(sp.max_iter, start, label=os.path.basename(sp.snapshot_prefix) or "train")
        status.enabled = self.root
        with self._signals(), status as bar:
            self._bar = bar
            self.step(sp.max_iter - self.iter)
        early = self._requested == "stop"
        if sp.snapshot_after_train and self._last_snapshot_iter != self.iter:
            if sp.snapshot_prefix:
                self._snapshot_point()
            elif self.root:
                log.warning("no snapshot_prefix: the final snapshot is not written")
        if early:
            if self.root:
                log.info("Optimization stopped early.")
            if self._log_gone:
                raise LogReaderGone(errno.EPIPE, f"the log's reader has gone: training stopped at iteration {self.iter}"
                                        + (f", snapshot {self.last_snapshot}" if self.last_snapshot else ""))
            return
        if sp.display and self.iter % sp.display == 0:
            with torch.no_grad():
                # Unlike Caffe, no layer state changes here (e.g. mask updates): the final
                # test must see the snapshotted model (README: deviations).
                self.net()
            loss = float(self.net.loss) if self.net.loss is not None else 0.0
            self._update_smoothed_loss(loss, start)
            if self.root:
                log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test_all()
        if self.root:
            log.info("Optimization Done.")

    def run_train(self, snapshot: str | None = None) -> None:
        """`caffe train`'s sequence (tools/caffe.cpp): "Resuming from" and the restore, "Starting
        Optimization", `solve`, and the tool's own "Optimization Done." (also after an early stop)."""
        if snapshot:
            if self.root:
                log.info("Resuming from %s", snapshot)
            self.restore(snapshot)
        if self.root:
            log.info("Starting Optimization")
        self.solve()
        if self.root:
            log.info("Optimization Done.")

    def step(self, iters: int) -> None:
        """Run `iters` iterations (Caffe's Solver::Step). The step mode (solvers/step.py: eager, deferred
        or a CUDA graph) is chosen at the first call and logged unless the CPU runs eager by default."""
        if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)):
            raise TypeError(f"Solver.step takes a number of iterations, got {iters!r}")
        if self.iter + iters > INT_MAX:
            raise ValueError(f"Solver.step({iters}) from iteration {self.iter} passes Caffe's int iteration counter "
                             f"({INT_MAX})")
        sp = self.param
        start = self.iter
        stop_iter = self.iter + iters
        self._losses.clear()
        self.smoothed_loss = 0.0
        self._t_last, self._it_last = time.time(), self.iter
        cbs = self.callbacks
        if not self._started:
            for cb in cbs:
                cb.on_start(self)
            self._started = True
        loop = self._device_loop()
        while self.iter < stop_iter:
            if loop is None or loop.graph is None:
                self.net.zero_grad(set_to_none=True)
            if (sp.test_interval and self.iter % sp.test_interval == 0
                    and (self.iter > 0 or sp.test_initialization)):
                self._read_losses(start)  # a test never runs after a non-finite iteration
                if self.root:
                    self.test_all()
                if self._requested == "stop" and not self.synchronized:
                    break  # (synchronized processes stop together at the end of the iteration)
            self.net.set_iteration(self.iter)
            for cb in cbs:
                cb.before_iteration(self)
            display = bool(sp.display and self.iter % sp.display == 0)
            self.net.debug_info = display and sp.debug_info  # as Caffe's Solver::Step sets it
            if loop is None:
                self._eager_iteration(start, display)
            else:
                self._device_iteration(loop, start, display)
            self.iter += 1
            for cb in cbs:
                cb.after_iteration(self)
            if self.epoch_iters and self.iter % self.epoch_iters == 0:
                self._read_losses(start)
                self.epoch_end(self.iter // self.epoch_iters)
            request, self._requested = self._requested, None
            for cb in cbs:
                request = cb.agree_request(self, request)
            if (sp.snapshot and self.iter % sp.snapshot == 0) or request == "snapshot":
                self._read_losses(start)  # no snapshot after a non-finite iteration
                self._snapshot_point()
            if getattr(self, "_bar", None) is not None:
                self._bar.update(self.iter, f"loss {self.smoothed_loss:.4g}")
            if request == "stop":
                self._requested = "stop"
                break
        self._read_losses(start)

    def _eager_iteration(self, start: int, display: bool) -> None:
        """Caffe's iteration as written: the loss read on the host, checked, displayed, then the update."""
        sp, cbs = self.param, self.callbacks
        loss_t = None
        for _ in range(sp.iter_size):
            loss_t = self._forward_backward(loss_t)
        loss = float(loss_t) / sp.iter_size
        bad_ranks: list[int] = []
        for cb in cbs:
            loss, bad = cb.reduce_loss(self, loss)
            bad_ranks += bad
        if not math.isfinite(loss) or bad_ranks:
            self._non_finite(self.iter, loss, bad_ranks)
        self._update_smoothed_loss(loss, start)
        if display:
            self._display()
        self.apply_update()

    def _backward(self) -> None:
        """The backward pass of the net's loss, between the callbacks' before_backward and after_backward."""
        if self.net.loss is None:  # solve() refuses such a net; step() called directly does not
            raise NetcompressError(f"the train net '{self.net.name}' has no loss (no *Loss layer "
                                   "and no loss_weight): nothing to train")
        for cb in self.callbacks:
            cb.before_backward(self)
        if self.net.loss.requires_grad:  # (else no layer needs backward, as Caffe logs: the loss reaches no
            self.net.loss.backward()     # learnable parameter, e.g. all lr_mult: 0; the update changes nothing)
        self.net.log_backward_debug_info()  # Caffe's debug_info lines (display iterations only)
        for cb in self.callbacks:
            cb.after_backward(self)

    def _forward_backward(self, loss_t: torch.Tensor | None) -> torch.Tensor:
        """One of the iteration's iter_size forward/backward passes; returns the loss summed so far."""
        cbs = self.callbacks
        for cb in cbs:
            cb.before_forward(self)
        self.net()
        self._backward()
        l = self.net.loss.detach()
        return l if loss_t is None else loss_t + l

    def _device_iteration(self, loop: DeviceLoop, start: int, display: bool) -> None:
        """A deferred or graphed iteration (solvers/step.py): the loss stays on the device until a host read."""
        sp, cbs = self.param, self.callbacks
        if loop.nets_changed:  # rebuild_nets: the new nets' layers decide again
            loop.nets_changed = False
            why = graph_refusal(self) if loop.graphed else None
            if why:
                loop.drop_graph()
                loop.graphed = False
                self.step_mode = "deferred"  # what runs from here (benchmarks and callers read it)
                self.net.zero_grad(set_to_none=True)
                if self.root:
                    log.info("Training step: deferred from iteration %d on (no CUDA graph: %s)", self.iter, why)
        if loop.graphed and loop.graph is not None and not loop.still_valid():
            if self.root:
                log.info("CUDA graph: the net's tensors were replaced; capturing the iteration again")
            loop.drop_graph()
            self.net.zero_grad(set_to_none=True)
        if not loop.graphed:
            loss_t = None
            for _ in range(sp.iter_size):
                loss_t = self._forward_backward(loss_t)
            self._record(loop, loss_t, start)
            if display:
                self._read_losses(start)
                self._display()
            self.apply_update(loop)
            return
        # Graph mode: the rate, the before_forward hooks and the data layers run eagerly, then the replay.
        rate = self.rate = self.learning_rate()
        loop.set_rate(rate)
        for cb in cbs:
            cb.before_forward(self)
        tops = self.net.data_tops()
        if loop.graph is None and loop.warm >= GRAPH_WARMUP:
            try:
                loop.capture(tops, lambda: self._graph_body(loop, rate))
            except Exception as e:  # noqa: BLE001  (any capture failure: run without graphs from here)
                loop.drop_graph()
                loop.graphed = False
                self.step_mode = "deferred"
                self.net.zero_grad(set_to_none=True)
                if self.root:
                    log.warning("CUDA graph capture failed at iteration %d (%s: %s); running deferred "
                                "iterations without graphs", self.iter, type(e).__name__, e)
                torch.cuda.synchronize(self.device)
        if loop.graph is not None:
            loop.feed(tops)
            loop.replay()
            loop.pending.append(self.iter)
        else:
            if loop.graphed:
                loop.warm += 1
            with loop.side_stream_context() if loop.graphed else contextlib.nullcontext():
                self.net.forward_with(tops)
                self._graph_body_after_forward(loop, rate)
            loop.pending.append(self.iter)
        if loop.full:
            self._read_losses(start)
        if display:
            self._read_losses(start)
            self._display()
            if self.root:
                log.info("Iteration %d, lr = %g", self.iter, rate)

    def _graph_body(self, loop: DeviceLoop, rate: float) -> None:
        """What the CUDA graph captures: the forward from the graph's inputs, then the rest of the iteration."""
        self.net.forward_with(loop._static)
        self._graph_body_after_forward(loop, rate)

    def _graph_body_after_forward(self, loop: DeviceLoop, rate: float) -> None:
        self._backward()
        loop.record_loss(self.net.loss.detach())
        for cb in self.callbacks:
            cb.before_update(self)
        loop.update(self._grads(), rate, fill=False)

    def _record(self, loop: DeviceLoop, loss_t: torch.Tensor, start: int) -> None:
        loop.record_loss(loss_t)
        loop.pending.append(self.iter)
        if loop.full:
            self._read_losses(start)

    def _read_losses(self, start: int) -> None:
        """The deferred modes' host read: Caffe's smoothed loss over the iterations since the last read, in
        order, stopping at the first non-finite loss (a no-op in eager mode)."""
        loop = self._loop
        if loop is None or not loop.pending:
            return
        for it, value in loop.read():
            loss = value / self.param.iter_size
            if not math.isfinite(loss):
                self._non_finite(it, loss, [])
            self._update_smoothed_loss(loss, start, it)

    def _non_finite(self, iteration: int, loss: float, bad_ranks: list[int]) -> None:
        kept = self.last_snapshot or "none was written"
        where = "" if not bad_ranks else \
            f" on rank{'s' if len(bad_ranks) > 1 else ''} {', '.join(map(str, bad_ranks))}"
        causes = [c for c in (layer.non_finite_cause() for layer in self.net.layers.values()) if c]
        advice = " ".join(causes) if causes else "Lower base_lr or check the data and weights."
        msg = (f"Iteration {iteration}, loss = {loss}: the loss is not finite{where}, training "
               f"stopped before applying this update. Last good snapshot: {kept}. {advice}")
        if self.root:
            log.error(msg)
        # Deferred modes: the iterations after it changed no weight or history; the solver stands where
        # the eager loop stops.
        self.iter = iteration
        raise NonFiniteLossError(msg)

    def _display(self) -> None:
        """Caffe's display lines: the smoothed loss, the speed, the train net's outputs."""
        if not self.root:
            return
        sp = self.param
        now = time.time()
        lapse = now - self._t_last
        per_s = (self.iter - self._it_last) / (lapse if lapse else 1)
        log.info("Iteration %d (%g iter/s, %.3fs/%d iters), loss = %g",
                 self.iter, per_s, lapse, sp.display, self.smoothed_loss)
        self._t_last, self._it_last = now, self.iter
        score = 0
        for name, blob in self.net.blobs_of_outputs().items():
            shown = blob.detach().reshape(-1)[:MAX_LOGGED_OUTPUT_VALUES].double().cpu().tolist()
            score = _log_output("Train", name, shown, blob.numel(), self.net.loss_weights.get(name, 0.0), score)

    def _device_loop(self) -> DeviceLoop | None:
        """The deferred/graph state (created, with the step-mode log line, at the first step), or None (eager)."""
        if self._loop_chosen:
            return self._loop
        mode, why = choose_step_mode(self)
        self._loop_chosen = True
        self.step_mode = mode
        self._loop = None if mode == "eager" else DeviceLoop(self, graphed=mode == "graph")
        if self.root and not (mode == "eager" and self.device.type == "cpu"
                              and self.options.get("step_mode", "auto") == "auto"):
            text = {"eager": "eager (the loss read on the host every iteration)",
                    "deferred": "deferred (losses read on the host at display, test, epoch and snapshot points)",
                    "graph": f"CUDA graph (the whole iteration captured after {GRAPH_WARMUP} deferred iterations "
                             "and replayed; the lr policy, the layers' before-forward hooks and the data layers run "
                             "eagerly before each replay)"}[mode]
            log.info("Training step: %s; %s", text, why)
        return self._loop

    def epoch_end(self, epoch: int) -> None:
        """Epoch `epoch` (1-based) has ended: log it and run the callbacks' epoch-end hooks."""
        if self.root:
            log.info("Epoch %d done (iteration %d, %d iterations per epoch)", epoch, self.iter, self.epoch_iters)
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch)

    @property
    def synchronized(self) -> bool:
        """Whether several processes train together (a callback with `synchronizes`): a stop request
        then waits for the end of the iteration, where all of them act on it."""
        return any(getattr(cb, "synchronizes", False) for cb in self.callbacks)

    def _update_smoothed_loss(self, loss: float, start: int, iteration: int | None = None) -> None:
        """Caffe's UpdateSmoothedLoss with the loss of `iteration` (default: the current one)."""
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = ((self.iter if iteration is None else iteration) - start) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    # -- update ----------------------------------------------------------------------------
    def learning_rate(self) -> float:
        """This iteration's rate: the lr_policy's, then each callback's `learning_rate`."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        for cb in self.callbacks:
            rate = cb.learning_rate(self, rate)
        if not math.isfinite(rate):
            sp = self.param
            raise NetcompressError(f"{self.source}: the learning rate of iteration {self.iter} is {rate} "
                                   f"(lr_policy \"{sp.lr_policy}\", base_lr {sp.base_lr:g}, gamma {sp.gamma:g}, "
                                   f"power {sp.power:g}): not a finite number")
        return rate

    def apply_update(self, loop: DeviceLoop | None = None) -> None:
        """Caffe's ApplyUpdate: rate, clip, normalize, regularize, update value, w -= update. With a deferred
        `loop` (solvers/step.py), the update runs on the device, guarded by its finite flag."""
        sp = self.param
        rate = self.rate = self.learning_rate()  # (callbacks' before_update may read solver.rate)
        if self.root and sp.display and self.iter % sp.display == 0:
            log.info("Iteration %d, lr = %g", self.iter, rate)
        for cb in self.callbacks:
            cb.before_update(self)
        grads = self._grads()
        if loop is not None:
            loop.update(grads, rate)
            return
        self._clip(grads)
        wd = float(sp.weight_decay)
        reg = sp.regularization_type
        if reg not in ("L1", "L2"):
            raise NetcompressError(f"Unknown regularization type: \"{reg}\" (use L1 or L2)")
        kw = dict(momentum=float(sp.momentum), delta=float(sp.delta), rms_decay=float(sp.rms_decay),
                  momentum2=float(sp.momentum2), t=self.iter + 1)
        lr_outside = sp.momentum_form == pb.SolverParameter.LR_OUTSIDE and self.type in RATE_IN_HISTORY
        with torch.no_grad():
            for i, e in enumerate(self.params):
                g = grads[i]
                if g is None:
                    continue
                w = e.tensor
                if sp.iter_size > 1:
                    g.mul_(1.0 / sp.iter_size)
                local_decay = wd * e.decay_mult
                if local_decay:
                    if reg == "L2":
                        g.add_(w, alpha=local_decay)
                    else:
                        g.add_(torch.sign(w), alpha=local_decay)
                if self.type == "LarsSGD":
                    local_rate = rate * self._lars_ratio(w, g, wd)
                else:
                    local_rate = rate * e.lr_mult
                mask = self.net.param_layer(e).update_mask(e.index)
                if lr_outside:
                    self._rule(g, self.history[i], rate=1.0, mask=mask, **kw)
                    g.mul_(local_rate)
                else:
                    self._rule(g, self.history[i], rate=local_rate, mask=mask, **kw)
                w.sub_(g)

    def _grads(self) -> list[torch.Tensor | None]:
        """Each parameter's gradient (a zero one where the backward left none; None: not learnable)."""
        grads = []
        for e in self.params:
            if not e.learnable:
                grads.append(None)
                continue
            g = e.tensor.grad
            if g is None:
                g = torch.zeros_like(e.tensor)
                e.tensor.grad = g
            grads.append(g)
        return grads

    def _lars_ratio(self, w: torch.Tensor, g: torch.Tensor, wd: float) -> float:
        # reference-semantics 4.5: eta*||w|| / (||g|| + wd*||w||), 1 if either norm is 0;
        # g already holds the decay term, and wd is the global weight_decay.
        wn = float(torch.linalg.vector_norm(w))
        gn = float(torch.linalg.vector_norm(g))
        if wn > 0 and gn > 0:
            return float(self.param.local_gw_ratio) * wn / (gn + wd * wn)
        return 1.0

    def _clip(self, grads: list[torch.Tensor | None]) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            if self.root:
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                         norm, clip, scale)
            for g in grads:
                if g is not None:
                    g.mul_(scale)

    # -- testing ---------------------------------------------------------------------------
    def test_all(self) -> list[list[tuple[str, float]]]:
        results = []
        for i in range(len(self.test_nets)):
            if self._requested == "stop":
                break
            results.append(self.test(i))
        return results

    def test(self, index: int) -> list[tuple[str, float]]:
        """Caffe's Solver::Test of test net `index`: its test_iter forwards, the outputs averaged and logged."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.test_nets):
            raise IndexError(f"{self.source}: test net {index!r}: the solver has {len(self.test_nets)} test net(s)")
        sp = self.param
        net = self.test_nets[index]
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        net.debug_info = bool(sp.debug_info)  # Caffe's test nets log every forward with debug_info
        n = sp.test_iter[index]
        sums: dict[str, torch.Tensor] = {}  # each output's values summed elementwise in float64, as Caffe's
        loss = 0.0
        with torch.no_grad():
            for i in range(n):
                # Distributed: the other processes are not testing, so a snapshot request waits
                # for the end of the iteration, where all of them act on it together.
                if self._requested == "snapshot" and not self.synchronized:
                    self._requested = None
                    self.snapshot()
                if self._requested == "stop":
                    log.info("Test interrupted.")
                    return []
                outputs = net()
                if sp.test_compute_loss and net.loss is not None:
                    loss += float(net.loss)
                for name, blob in outputs.items():
                    v = blob.detach().reshape(-1).double()
                    if i == 0:
                        sums[name] = v.clone()
                    elif v.numel() != sums[name].numel():
                        raise NetcompressError(f"test net #{index}: output '{name}' holds {v.numel()} values at "
                                               f"test iteration {i}, {sums[name].numel()} at the first: Caffe "
                                               "averages each value over the test iterations")
                    else:
                        sums[name] += v
        if sp.test_compute_loss:
            log.info("Test loss: %g", loss / n)
        scores = []
        k = 0
        for name, total in sums.items():
            means = (total / n).cpu().tolist()
            k = _log_output("Test", name, means, len(means), net.loss_weights.get(name, 0.0), k)
            scores += [(name, mean) for mean in means]
        self.last_test_scores = scores
        return scores

    # -- snapshots -------------------------------------------------------------------------
    def snapshot_filename(self, ext: str) -> str:
        return self.snapshot_filename_at(self.iter, ext)

    def snapshot_filename_at(self, iteration: int, ext: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{iteration}{ext}"

    def _snapshot_point(self) -> None:
        """A snapshot in the loop: every process checks consistency together, then rank 0 writes."""
        for cb in self.callbacks:
            cb.before_snapshot(self)
        if self.root:
            self.snapshot()
        else:
            self._last_snapshot_iter = self.iter

    def _hdf5(self) -> bool:
        return self.param.snapshot_format == pb.SolverParameter.HDF5

    def _state_ext(self) -> str:
        return ".solverstate.h5" if self._hdf5() else ".solverstate"

    def snapshot(self) -> str:
        """Write <prefix>_iter_N.caffemodel, .solverstate and the netcompress sidecar, atomically
        (.caffemodel.h5 and .solverstate.h5 with `snapshot_format: HDF5`, as Caffe)."""
        if not self.param.snapshot_prefix:
            raise NetcompressError(f"{self.source}: cannot snapshot: snapshot_prefix is not set")
        self.net.before_snapshot()
        history = [hist[k] for k in range(self._nhist) for hist in self.history]  # Caffe's history_ order
        sfile = self.snapshot_filename(self._state_ext())
        if self._hdf5():
            model = self.snapshot_filename(".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model)
            self.net.save_hdf5(model, write_diff=self.param.snapshot_diff)
            log.info("Snapshotting solver state to HDF5 file %s", sfile)
            write_hdf5_state(sfile, self.iter, model, self.current_step, history)
        else:
            model = self.snapshot_filename(".caffemodel")
            log.info("Snapshotting to binary proto file %s", model)
            self.net.save(model, write_diff=self.param.snapshot_diff)
            state = pb.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
            for h in history:
                ncio.array_to_blob(h, state.history.add())
            log.info("Snapshotting solver state to binary proto file %s", sfile)
            ncio.write_binary_proto(sfile, state)
        save_state(sfile + SIDECAR_SUFFIX, self._extra_state())
        self.last_snapshot = model
        self._last_snapshot_iter = self.iter
        return model

    def _extra_state(self) -> dict:
        tree = {
            "format": 1,
            "solver_type": self.type,
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _np_rng_state(),
            "train": self.net.extra_state(),
            "test": [n.extra_state() for n in self.test_nets],
        }
        callbacks = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key}
        callbacks = {k: v for k, v in callbacks.items() if v is not None}
        if callbacks:
            tree["callbacks"] = callbacks
        if torch.cuda.is_available() and self.device.type == "cuda":
            tree["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return tree

    def restore(self, path: str) -> None:
        """Resume from a .solverstate (Caffe's or netcompress's): weights, iter, history, state.

        The callbacks get their saved state first (`load_state_dict`, with `iter` already set), so
        that one may rebuild the nets to the snapshot's structure (`rebuild_nets`) before the
        weights, the history and the layers' state are loaded into them. A file whose name ends in
        `.h5` is read as Caffe's HDF5 solver state (Solver::Restore's rule)."""
        path = os.fsdecode(os.fspath(path))
        state = read_hdf5_state(path) if path.endswith(".h5") else ncio.read_binary_proto(path, pb.SolverState())
        if not state.learned_net and not len(state.history) and not path.endswith(".h5"):
            hint = ncio.other_file_hint(ncio.read_input_bytes(path, "solver state"))
            if hint:  # (a caffemodel parses as an empty SolverState: its fields' wire types differ)
                raise NetcompressError(f"{path}: not a solver state{hint}")
        if state.iter < 0:
            raise NetcompressError(f"{path}: the solver state's iteration is {state.iter}; expected 0 or more (a "
                                   "corrupted solver state)")
        self.iter = state.iter
        side = path + SIDECAR_SUFFIX
        tree = _load_sidecar(side) if os.path.exists(side) else None
        self.restored_state = tree
        with _usable_sidecar(side):
            saved = (tree or {}).get("callbacks") or {}
            for cb in self.callbacks:
                if cb.state_key:
                    cb.load_state_dict(saved.get(cb.state_key))
        if state.HasField("learned_net"):
            model = state.learned_net
            if not os.path.exists(model):
                alt = os.path.join(os.path.dirname(path), os.path.basename(model))
                if model and os.path.isfile(alt):
                    model = alt
                else:
                    raise NetcompressError(f"{path}: its model, learned_net \"{model}\", does not exist (nor beside "
                                           "the solver state)")
            self.net.copy_from(model)
        self.current_step = state.current_step
        expected = self._nhist * len(self.history)
        if len(state.history) != expected:
            raise NetcompressError(f"{path}: Incorrect length of history blobs: the file has "
                                   f"{len(state.history)}, this {self.type} solver on this net needs "
                                   f"{expected}")
        log.info("SGDSolver: restoring history") if self.root else None
        for j, blob in enumerate(state.history):
            k, i = divmod(j, len(self.history))
            try:
                arr = ncio.blob_to_array(blob)
            except ValueError as e:
                raise NetcompressError(f"{path}: history blob {j}: {e} (a corrupted solver state)") from None
            target = self.history[i][k]
            if arr.size != target.numel():
                raise NetcompressError(f"{path}: history blob {j} has {arr.size} values, parameter "
                                       f"{self.params[i].key} has {target.numel()}")
            target.copy_(torch.from_numpy(arr.reshape(target.shape)))
        if tree is not None:
            with _usable_sidecar(side):
                torch.set_rng_state(tree["torch_rng"])
                _np_set_rng_state(tree["numpy_rng"])
                if "cuda_rng" in tree and self.device.type == "cuda":
                    torch.cuda.set_rng_state(tree["cuda_rng"], self.device)
                self.net.load_extra_state(tree["train"])
                for n, s in zip(self.test_nets, tree["test"]):
                    n.load_extra_state(s)
        else:
            log.warning("%s has no netcompress state (%s): data positions, random generators and "
                        "layer state start afresh; the run will not continue bit-identically",
                        path, os.path.basename(side))
            self.net.load_extra_state(None)

    # -- signals ---------------------------------------------------------------------------
    def request(self, action: str) -> None:
        """Ask the loop to 'snapshot' or 'stop' after the current iteration (signal handlers)."""
        self._requested = action

    @contextlib.contextmanager
    def _signals(self):
        """While solving: SIGINT and SIGHUP ask for their effect after the iteration (a second Ctrl-C aborts at
        once), and a log whose reader has gone (`netcompress train ... 2>&1 | head`) stops and snapshots as
        Ctrl-C does, then ends quietly; Caffe dies of SIGPIPE at its next log line, losing the run, and training
        on unseen would hold the shell."""

        def reader_gone() -> None:
            self._log_gone = True
            self._requested = "stop"

        def handler(signum, frame) -> None:
            eff = self.sigint_effect if signum == signal.SIGINT else self.sighup_effect
            if eff == "none":
                return
            if self._requested == "stop" and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C aborts at once
            log.info("Caught %s: will %s after this iteration", signal.Signals(signum).name, eff)
            self._requested = eff

        old = {}
        try:
            with on_reader_gone(reader_gone):
                if _main_thread():
                    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
                        if sig is not None:
                            old[sig] = signal.signal(sig, handler)
                yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)


def write_hdf5_state(path: str, iteration: int, model: str, current_step: int, history) -> None:
    """Caffe's SGDSolver::SnapshotSolverStateToHDF5, atomically: int datasets `iter` and `current_step`,
    the string `learned_net` (NUL-terminated, as H5LTmake_dataset_string writes it), and a float32
    dataset per history blob in /history."""
    import h5py

    with ncio.atomic_file(path) as f, h5py.File(f, "w") as h:
        h.create_dataset("iter", data=np.array([iteration], np.int32))
        raw = os.fsencode(model) + b"\0"
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(raw))
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        dset = h5py.h5d.create(h.id, b"learned_net", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw, dtype=f"S{len(raw)}"))
        h.create_dataset("current_step", data=np.array([current_step], np.int32))
        g = h.create_group("history")
        for i, t in enumerate(history):
            g.create_dataset(str(i), data=t.detach().to("cpu", torch.float32).numpy())


def read_hdf5_state(path: str) -> pb.SolverState:
    """Caffe's HDF5 solver state (`write_hdf5_state`) as a SolverState; errors name the file."""
    import h5py

    ncio.check_input_file(path, "solver state")
    state = pb.SolverState()
    try:
        with h5py.File(path, "r") as h:
            missing = [k for k in ("iter", "current_step", "history") if k not in h]
            if missing:
                hint = ("; it is an HDF5 caffemodel (it holds /data): give weights with --weights, and resume from a "
                        ".solverstate.h5 with --snapshot") if "data" in h else ""
                raise NetcompressError(f"{path}: not Caffe's HDF5 solver state (no {', '.join(missing)}){hint}")
            state.iter = int(np.asarray(h["iter"]).reshape(-1)[0])
            state.current_step = int(np.asarray(h["current_step"]).reshape(-1)[0])
            if "learned_net" in h:
                raw = h["learned_net"][()]
                raw = raw.tobytes() if isinstance(raw, np.ndarray) else raw
                state.learned_net = os.fsdecode(bytes(raw).split(b"\0", 1)[0])
            hist = h["history"]
            for i in range(len(hist)):
                if str(i) not in hist:
                    raise NetcompressError(f"{path}: /history has {len(hist)} entries but no '{i}'")
                ncio.array_to_blob(np.asarray(hist[str(i)], dtype=np.float32), state.history.add())
    except NetcompressError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise NetcompressError(f"{path}: not a readable HDF5 solver state ({e})") from None
    return state


def _carry_over(old: Net, new: Net, blobs=lambda name: True) -> None:
    """Copy, for every layer name in both nets, the blobs (where `blobs(name)`) and the layer's
    snapshot state from `old` into `new`, and `old`'s named generators (see Solver.rebuild_nets). Of several
    layers of one name, the k-th takes the old net's k-th."""
    sources = dict(old.labelled_layers())
    for (label, layer), name in zip(new.labelled_layers(), new.layer_names):
        src = sources.get(label)
        if src is None:
            continue
        if blobs(name):
            if len(src.blob_names) != len(layer.blob_names):
                raise NetcompressError(f"layer '{name}' holds {len(src.blob_names)} blobs in the old net and "
                                       f"{len(layer.blob_names)} in the rebuilt one: a layer must keep its "
                                       "blobs across stages")
            with torch.no_grad():
                for bs, bd in zip(src.blob_names, layer.blob_names):
                    s, d = getattr(src, bs), getattr(layer, bd)
                    if tuple(s.shape) != tuple(d.shape):
                        raise NetcompressError(f"layer '{name}' changes the shape of blob '{bd}' from "
                                               f"{list(s.shape)} to {list(d.shape)} between stages; give the "
                                               "layers of different stages different names")
                    d.copy_(s)
        state = src.snapshot_state()
        if state is not None:  # (None: no state so far, as the new layer's)
            layer.restore_state(state)
    for gname, gen in old.ctx.named_generators().items():
        new.ctx.named_generator(gname).set_state(gen.get_state())


def _close_data(net: Net) -> None:
    """Stop the background threads of a net's data layers (a net being replaced)."""
    for _, layer in net.named_layers():
        close = getattr(layer, "close", None)
        if layer.is_data and callable(close):
            close()


def _load_sidecar(side: str) -> dict:
    """The netcompress state beside a .solverstate; a corrupted file is an error naming it."""
    try:
        return load_state(side)
    except NetcompressError:
        raise
    except Exception as e:  # a corrupted archive fails in many ways (zip, npy header, json)
        raise _unusable(side, e) from None


def _unusable(side: str, e: BaseException) -> NetcompressError:
    # A damaged archive can fail as an OSError too (zipfile seeking before the file's start: EINVAL).
    what = f"a damaged archive: {describe_os_error(e)}" if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
    return NetcompressError(f"{side}: not a usable netcompress solver state ({what}); it does "
                            "not belong to this net and solver, or is corrupted. Without it (delete it) the run "
                            "resumes, but data positions, random generators and layer state start afresh")


@contextlib.contextmanager
def _usable_sidecar(side: str):
    """Errors of applying a sidecar whose content is not what this solver wrote name the file."""
    try:
        yield
    except NetcompressError:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as e:
        raise _unusable(side, e) from None


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _np_rng_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _np_set_rng_state(s) -> None:
    np.random.set_state((s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["cached"]))
