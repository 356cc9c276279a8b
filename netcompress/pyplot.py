"""matplotlib's pyplot for the tools that write charts: the Agg backend (files, no display), and matplotlib's own
deprecation warnings kept from the user.

A matplotlib older than its dependencies warns from inside itself (matplotlib 3.9, the last for Python 3.9, calls
pyparsing 3.3's deprecated `parseString` when it first lays out text): nothing the user wrote or can change, printed
under every chart. Only deprecation warnings raised in matplotlib's and pyparsing's own modules are filtered.
"""
from __future__ import annotations

import warnings

__all__ = ["pyplot"]


def pyplot(force: bool = True):
    """`matplotlib.pyplot` on the Agg backend (`force=False` keeps a backend already chosen, e.g. a notebook's)."""
    # (before the import: matplotlib 3.9 calls pyparsing's deprecated names at import time too; pyparsing
    # attributes some of its warnings to its own modules)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(matplotlib|pyparsing)(\.|$)")
    import matplotlib

    matplotlib.use("Agg", force=force)
    import matplotlib.pyplot as plt

    return plt
