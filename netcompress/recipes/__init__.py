"""Solver-level recipe features: training callbacks that solver fields switch on (growth, pruning
schedules, learning-rate schedules with state, ...).

Every module of this package is imported when a Solver is built (`solvers.callbacks.callbacks_for`),
so a module here registers its factory with `register_callback` and needs no other change; layer
modules register theirs on import as well. See docs/architecture.md.
"""
