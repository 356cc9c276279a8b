"""Solver `growth` (recipes-spec 2.3.2, 5.3.2, Q3): a net that grows by NetState stages during training.

The net marks the layers of growth stage k with `include { stage: "<prefix>k" }` (prefix
`growth.stage_prefix`, default "grow"; `make_sdn_net --growth` writes such nets), and the solver
trains stages grow0..growk from the k-th growth epoch on. With `growth { epoch: 25 epoch: 50
epoch: 75 }` and I = `epoch_iters`:

- the nets are built with stage grow0 (iterations [0, 24·I));
- at the start of epoch 25, i.e. after iteration 24·I − 1 (the solver's end of epoch 24; spec 5.1:
  epoch e covers iterations [(e−1)·I, e·I)), before that epoch's first iteration and before any
  pruning of that epoch (`snip_schedule` runs after this callback), the solver rebuilds the TRAIN
  and TEST nets with stages grow0, grow1 (`Solver.rebuild_nets`): every blob and layer state
  carried over by layer name, new parameters from their fillers with zero momentum history;
- likewise grow2 at epoch 50 and grow3 at epoch 75.

`grown_lr` (Q3): FOLLOW_SCHEDULE (default) trains every parameter at the lr_policy's rate;
CONSTANT_BASE_LR (faithful INRIA, whose grown parameter groups never saw the scheduler) trains the
parameters of layers of stages >= 1 at `base_lr` (times their lr_mult) for the whole run. Deviation:
INRIA's end layers (the final classifier) exist from construction and follow the schedule; here they
belong to the last stage and so keep base_lr too.

The current stage is a function of the iteration. A snapshot stores it (state key "growth"), and
a resumed solver rebuilds its nets to that stage before it loads the weights and the history
(`Solver.restore` hands callbacks their state first), so a resume is bit-identical.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import NetcompressError
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ..solvers.callbacks import TrainingCallback, register_callback

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.solver import Solver

__all__ = ["Growth", "layer_stage", "growth_stage_at"]

log = get_logger("solver")


def layer_stage(lp: pb.LayerParameter, prefix: str = "grow") -> int:
    """The growth stage k of a layer: the largest k of a `<prefix>k` stage its include rules name,
    0 when they name none (data and stem layers belong to stage 0)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)")
    ks = [int(m.group(1)) for rule in lp.include for s in rule.stage if (m := pat.fullmatch(s))]
    return max(ks) if ks else 0


def growth_stage_at(epochs: list[int], epoch_iters: int, iteration: int) -> int:
    """The stage trained at `iteration`: how many growth epochs g have started, (g−1)·I <= iteration."""
    return sum(1 for g in epochs if (g - 1) * epoch_iters <= iteration)


class Growth(TrainingCallback):
    """The solver field `growth` (see the module docstring)."""

    state_key = "growth"

    def __init__(self, param: pb.GrowthParameter, source: str = "<solver>"):
        self.epochs = [int(e) for e in param.epoch]
        if any(e < 1 for e in self.epochs) or any(b <= a for a, b in zip(self.epochs, self.epochs[1:])):
            raise NetcompressError(f"{source}: growth.epoch must list increasing 1-based epochs, got "
                                   f"{self.epochs}")
        self.prefix = param.stage_prefix
        if not self.prefix:
            raise NetcompressError(f"{source}: growth.stage_prefix is empty")
        self.constant_lr = param.grown_lr == pb.GrowthParameter.CONSTANT_BASE_LR
        self.source = source
        self.stage: int | None = None
        self.solver: "Solver | None" = None
        self._restore_mult: list[tuple[object, float]] = []
        self._grown: list = []  # the learnable ParamEntries of layers of stages >= 1

    def stages(self, k: int) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(k + 1)]

    def stage_at(self, iteration: int) -> int:
        return growth_stage_at(self.epochs, self.solver.epoch_iters, iteration)

    # -- growing -------------------------------------------------------------------------------
    def attach(self, solver: "Solver") -> None:
        self.solver = solver
        solver.require_epoch_iters("growth")
        if self.constant_lr and solver.type == "LarsSGD":
            raise NetcompressError(f"{self.source}: growth.grown_lr CONSTANT_BASE_LR scales lr_mult, which "
                                   "LarsSGD replaces by its trust ratio; use FOLLOW_SCHEDULE")
        self.grow_to(self.stage_at(solver.iter))

    def grow_to(self, k: int) -> None:
        """Rebuild the solver's nets with stages grow0..growk (nothing if already there)."""
        if k == self.stage:
            return
        solver = self.solver
        before = {e.key for e in solver.params}
        layers_before = set(solver.net.layer_names)
        solver.rebuild_nets(self.stages(k))
        self.stage = k
        new_layers = [n for n in solver.net.layer_names if n not in layers_before]
        new_params = sum(e.tensor.numel() for e in solver.params if e.key not in before and e.learnable)
        if solver.root:
            log.info("Growth: iteration %d (epoch %d) trains stages %s: %d new layers, %d new learnable "
                     "values", solver.iter, solver.epoch, ", ".join(self.stages(k)), len(new_layers), new_params)
        if not new_layers and layers_before:
            log.warning("Growth: stage %s%d adds no layer to the net (no layer has include { stage: "
                        "\"%s%d\" })", self.prefix, k, self.prefix, k) if solver.root else None

    def on_epoch_end(self, solver: "Solver", epoch: int) -> None:
        self.grow_to(self.stage_at(solver.iter))

    # -- grown_lr: CONSTANT_BASE_LR --------------------------------------------------------------
    def nets_rebuilt(self, solver: "Solver") -> None:
        self._grown = [e for e in solver.params
                       if e.learnable and layer_stage(solver.net.param_layer(e).layer_param, self.prefix) > 0]

    def before_update(self, solver: "Solver") -> None:
        if not self.constant_lr:
            return
        rate, base = solver.rate, float(solver.param.base_lr)
        grown = self._grown
        if not grown or rate == base:
            return
        if not rate:
            raise NetcompressError(f"{self.source}: iteration {solver.iter}: the lr_policy's rate is 0, so "
                                   "growth.grown_lr CONSTANT_BASE_LR cannot give the grown layers base_lr")
        # The solver multiplies each parameter's rate by its lr_mult: scale it for this update.
        for e in grown:
            self._restore_mult.append((e, e.lr_mult))
            e.lr_mult = e.lr_mult * base / rate

    def after_iteration(self, solver: "Solver") -> None:
        for e, mult in self._restore_mult:
            e.lr_mult = mult
        self._restore_mult = []

    # -- snapshots -------------------------------------------------------------------------------
    def state_dict(self):
        return {"stage": int(self.stage or 0)}

    def load_state_dict(self, state) -> None:
        expected = self.stage_at(self.solver.iter)
        k = expected if state is None else int(state["stage"])
        if k != expected:
            log.warning("Growth: the snapshot at iteration %d trained stage %d, the schedule says %d; "
                        "resuming with stage %d", self.solver.iter, k, expected, k)
        self.grow_to(k)


@register_callback
def _growth(solver: "Solver") -> TrainingCallback | None:
    if not solver.param.HasField("growth"):
        return None
    return Growth(solver.param.growth, solver.source)
