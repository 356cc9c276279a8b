"""netcompress.pyplot: the Agg backend, and matplotlib's own deprecation warnings kept from the user."""
from __future__ import annotations

import warnings

from netcompress.pyplot import pyplot


def test_matplotlib_internal_deprecations_are_filtered_and_others_are_not():
    # (matplotlib 3.9, the last for Python 3.9, warned "'parseString' deprecated" from pyparsing 3.3 under every
    # chart of `plot`; found by the fuzz on torch 2.4.1 / Python 3.9)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        plt = pyplot()  # installs its filter in front of "always"
        assert plt.get_backend().lower() == "agg"
        warnings.warn_explicit("'parseString' deprecated", DeprecationWarning, "_mathtext.py", 1,
                               module="matplotlib._mathtext")
        warnings.warn_explicit("'parseAll' argument is deprecated", DeprecationWarning, "util.py", 466,
                               module="pyparsing.util")
        warnings.warn_explicit("old", DeprecationWarning, "x.py", 1, module="netcompress.tools.logs")
        warnings.warn_explicit("matplotlib's", UserWarning, "_mathtext.py", 2, module="matplotlib._mathtext")
    assert [str(w.message) for w in seen] == ["old", "matplotlib's"]
