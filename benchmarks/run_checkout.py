"""Run a script or module with the netcompress of another checkout: the old arm of an A/B comparison.

    python benchmarks/run_checkout.py CHECKOUT SCRIPT [ARGS...]
    python benchmarks/run_checkout.py CHECKOUT -m MODULE [ARGS...]

CHECKOUT is a clone whose extension is built in place (`python setup.py build_ext --inplace` there).
`PYTHONPATH=CHECKOUT` selects CHECKOUT only where nothing earlier on `sys.path` holds a netcompress: the script's
own folder and the current folder (for `-c` and `-m`) come first, and every benchmark script puts its own
repository first, so `PYTHONPATH=old python benchmarks/bench_kernels.py` run from a new checkout times the new
build in both arms. This puts a finder first on `sys.meta_path` that resolves `netcompress` to CHECKOUT's package
whatever the target does to `sys.path` (pip's editable finders are taken out as well), says on stderr which one
was loaded, and runs the target with `runpy` in this process. Nothing is imported before the target runs: the
target imports torch and netcompress in its own order, so whatever it sets before torch loads OpenMP (the
commands' `OMP_WAIT_POLICY=PASSIVE`, netcompress/threads.py) takes effect as in a plain run (benchmarks/RESULTS.md,
eleventh session: importing torch first gave the old arm spinning workers). Run both arms the same way. A
benchmark script of CHECKOUT itself (CHECKOUT/benchmarks/...) is the fairer old arm: it times what that
checkout's benchmark timed.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys

USAGE = "usage: run_checkout.py CHECKOUT (SCRIPT | -m MODULE) [ARGS...]"


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the top-level `netcompress` in CHECKOUT only (its submodules follow the package's own path)."""

    def __init__(self, checkout: str):
        self.checkout = checkout
        self.said = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "netcompress":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, [self.checkout])
        if spec is not None and not self.said:  # (runpy looks the package up twice)
            print(f"run_checkout.py: netcompress from {os.path.dirname(spec.origin)}", file=sys.stderr)
            self.said = True
        return spec


def use_checkout(checkout: str) -> None:
    """Make `import netcompress` load CHECKOUT's package in this process (call before anything imports it)."""
    package = os.path.join(checkout, "netcompress", "__init__.py")
    if not os.path.isfile(package):
        raise SystemExit(f"run_checkout.py: {checkout} has no netcompress/__init__.py: not a netcompress checkout")
    if "netcompress" in sys.modules:
        raise SystemExit("run_checkout.py: netcompress is imported already; call use_checkout first")
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
    sys.meta_path.insert(0, _CheckoutFinder(checkout))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or (argv[1] == "-m" and len(argv) < 3):
        print(USAGE, file=sys.stderr)
        return 2
    checkout = os.path.abspath(argv[0])
    use_checkout(checkout)
    if argv[1] == "-m":
        sys.argv = [argv[2]] + argv[3:]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[1:]
        runpy.run_path(argv[1], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
