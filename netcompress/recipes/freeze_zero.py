"""Solver `freeze_zero_params: true` (recipes-spec 2.3.3, Q4): INRIA's `SGDForPruning`.

INRIA computes the SGD step as PyTorch does (weight decay into the gradient, the momentum buffer
update) and then sets `d_p[p == 0] = 0`: every parameter entry that is exactly 0 before the update
keeps its value, while its momentum history is updated as usual. This callback records those
entries before the update and writes them back after it, which is the same thing for every update
rule (the sign of a zero is kept too). Pruned weights (0) stay 0, and so does every parameter
initialised to 0 (BatchNorm/Scale biases with a constant-0 filler) for the whole run: the faithful
quirk, hence off by default.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..solvers.callbacks import TrainingCallback, register_callback

if TYPE_CHECKING:  # pragma: no cover
    from ..solvers.solver import Solver

__all__ = ["FreezeZeroParams"]


class FreezeZeroParams(TrainingCallback):
    """Entries exactly 0 before an update are 0 after it (see the module docstring)."""

    def __init__(self) -> None:
        self._zeros: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def before_update(self, solver: "Solver") -> None:
        self._zeros = []
        for e in solver.params:
            if not e.learnable:
                continue
            t = e.tensor.detach()
            z = t == 0
            self._zeros.append((t, z, z & torch.signbit(t)))

    def after_iteration(self, solver: "Solver") -> None:
        with torch.no_grad():
            for t, z, negative in self._zeros:
                t.masked_fill_(z, 0.0)
                t.masked_fill_(negative, -0.0)
        self._zeros = []


@register_callback
def _freeze_zero_params(solver: "Solver") -> TrainingCallback | None:
    return FreezeZeroParams() if solver.param.freeze_zero_params else None
