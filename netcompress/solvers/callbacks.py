"""Training callbacks: the one way to add behaviour to the Solver's loop.

The Solver calls every callback at fixed points of Caffe's iteration (reference-semantics 4.1), in
the order the callbacks were added, on every process of a distributed run alike (so a callback may
communicate):

    attach                          when the callback joins the solver (before any restore)
    on_start                        before the first iteration (after any restore)
    per iteration:
        before_iteration            after the test, once the nets know the iteration
        iter_size x (before_forward, forward, before_backward, backward, after_backward)
        reduce_loss                 the iteration's loss (a data-parallel run averages it)
        before_update               before ApplyUpdate (a data-parallel run all-reduces gradients)
        learning_rate               may replace the iteration's rate (a schedule with state)
        after_iteration             after `iter += 1`
        on_epoch_end                when `iter` closes an epoch of `epoch_iters` iterations
        agree_request               one stop/snapshot decision for all processes
    before_snapshot                 at every snapshot point, before rank 0 writes
    nets_rebuilt                    after `Solver.rebuild_nets` replaced the nets (e.g. with other NetState stages)
    state_dict / load_state_dict    the callback's own state in the snapshot sidecar; a restore
                                    gives it back before loading weights and history

Callbacks come from three places: the built-in `LayerHooks` (the layers' own hooks), `Solver(...,
callbacks=[...])` (e.g. `netcompress.distributed.DataParallel`), and factories that recipe modules
register with `register_callback` (a factory receives the solver and returns a callback, or None
when its recipe is not used by this solver and net). See docs/architecture.md.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from .solver import Solver

__all__ = ["TrainingCallback", "LayerHooks", "AfterIteration", "register_callback", "callbacks_for",
           "RECIPE_PACKAGE"]


class TrainingCallback:
    """Base class: every hook does nothing (see the module docstring for when each runs)."""

    #: Non-empty: the key under which `state_dict()` is saved in snapshots (unique per solver).
    state_key: ClassVar[str] = ""
    #: Whether a CUDA-graphed step (solvers/step.py) may capture this callback's `before_backward`,
    #: `after_backward` and `before_update`: they then run once, while the graph is captured, and every
    #: replay repeats only their device work. A callback overriding one of them (or `reduce_loss`, which
    #: reads the loss on the host) without declaring this keeps the step out of CUDA graphs.
    graph_safe: ClassVar[bool] = False

    def attach(self, solver: "Solver") -> None:
        """When the callback joins `solver` (at the end of its construction, before any restore)."""

    def on_start(self, solver: "Solver") -> None:
        """Before the first iteration, after any restore."""

    def before_iteration(self, solver: "Solver") -> None:
        """Each iteration, after `net.set_iteration(iter)`, before the first forward."""

    def before_forward(self, solver: "Solver") -> None:
        """Before each of the iteration's `iter_size` TRAIN forwards."""

    def before_backward(self, solver: "Solver") -> None:
        """Before each backward."""

    def after_backward(self, solver: "Solver") -> None:
        """After each backward."""

    def reduce_loss(self, solver: "Solver", loss: float) -> tuple[float, list[int]]:
        """(the loss to use, the ranks whose loss is not finite); the identity by default."""
        return loss, []

    def before_update(self, solver: "Solver") -> None:
        """After the backward passes and the loss check, before ApplyUpdate."""

    def learning_rate(self, solver: "Solver", rate: float) -> float:
        """The rate of this iteration's update; `rate` is the lr_policy's (or the previous
        callback's) value."""
        return rate

    def after_iteration(self, solver: "Solver") -> None:
        """After the update and `iter += 1`."""

    def on_epoch_end(self, solver: "Solver", epoch: int) -> None:
        """After the last iteration of epoch `epoch` (1-based), before a snapshot at that point."""

    def agree_request(self, solver: "Solver", request: str | None) -> str | None:
        """One 'stop' / 'snapshot' / None decision from this process's request."""
        return request

    def before_snapshot(self, solver: "Solver") -> None:
        """At every snapshot point, on every process, before rank 0 writes."""

    def nets_rebuilt(self, solver: "Solver") -> None:
        """After `solver.rebuild_nets` replaced `solver.net`, `solver.test_nets`, `solver.params` and
        `solver.history` (new layers and parameters may have appeared): drop or re-read anything
        taken from the old ones."""

    def state_dict(self):
        """State a resumed run needs (numbers, strings, tensors, arrays, dicts/lists), or None."""
        return None

    def load_state_dict(self, state) -> None:
        """Restore `state_dict()`'s value (None when the snapshot has none). Called by
        `Solver.restore` once `solver.iter` is set, before the weights, the history and the layers'
        state are loaded, so a callback that changes the nets' structure can rebuild them first."""


class LayerHooks(TrainingCallback):
    """The layers' own hooks (layers/base.py) on the TRAIN net: the state changes Caffe makes inside
    Forward and Backward, and the epoch end. Graph-safe: the layers declare their own safety
    (`Layer.graph_safe`)."""

    graph_safe = True

    def before_forward(self, solver: "Solver") -> None:
        solver.net.before_train_forward()

    def before_backward(self, solver: "Solver") -> None:
        solver.net.before_backward()

    def after_backward(self, solver: "Solver") -> None:
        solver.net.after_backward()

    def on_epoch_end(self, solver: "Solver", epoch: int) -> None:
        solver.net.epoch_end(epoch)


class AfterIteration(TrainingCallback):
    """A callback made of one function, called with the solver after every iteration."""

    def __init__(self, fn: Callable[["Solver"], None]):
        self.fn = fn

    def after_iteration(self, solver: "Solver") -> None:
        self.fn(solver)


_FACTORIES: list[Callable[["Solver"], TrainingCallback | None]] = []

#: The package whose modules register solver-level recipe callbacks (their solver fields,
#: learning-rate schedules with state); all of them are imported. Layer modules
#: register theirs on import too.
RECIPE_PACKAGE = "netcompress.recipes"


def register_callback(factory: Callable[["Solver"], TrainingCallback | None]) -> Callable:
    """Register a factory that gives each new Solver a callback (or None). Usable as a decorator."""
    if factory not in _FACTORIES:
        _FACTORIES.append(factory)
    return factory


def _import_recipes() -> None:
    import pkgutil

    from ..layers.base import known_layer_types

    known_layer_types()  # layer modules register their callbacks on import
    package = importlib.import_module(RECIPE_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{RECIPE_PACKAGE}.{info.name}")


def callbacks_for(solver: "Solver") -> list[TrainingCallback]:
    """The registered factories' callbacks for `solver`, in registration order."""
    _import_recipes()
    out = []
    for factory in _FACTORIES:
        cb = factory(solver)
        if cb is not None:
            out.append(cb)
    return out
