"""Caffe solvers on netcompress nets: the training loop, update rules and learning-rate policies."""
from .lr import LR_POLICIES, learning_rate  # noqa: F401
from .solver import NonFiniteLossError, Solver  # noqa: F401
from .updates import UPDATE_RULES  # noqa: F401

__all__ = ["Solver", "NonFiniteLossError", "learning_rate", "LR_POLICIES", "UPDATE_RULES"]
