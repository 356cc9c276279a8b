"""Caffe solvers on netcompress nets: the training loop, update rules and learning-rate policies.

`Solver` and friends load on first use, so layer modules can register training callbacks
(`netcompress.solvers.callbacks`) without importing the training loop.
"""
from __future__ import annotations

__all__ = ["Solver", "NonFiniteLossError", "learning_rate", "LR_POLICIES", "UPDATE_RULES"]


def __getattr__(name: str):
    if name in ("Solver", "NonFiniteLossError"):
        from . import solver
        return getattr(solver, name)
    if name in ("learning_rate", "LR_POLICIES"):
        from . import lr
        return getattr(lr, name)
    if name == "UPDATE_RULES":
        from .updates import UPDATE_RULES
        return UPDATE_RULES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
