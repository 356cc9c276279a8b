"""Running a Caffe-era pycaffe script unchanged: `netcompress pycaffe SCRIPT.py [ARGS...]`.

The script's `import caffe` (and `caffe.io`, `caffe.proto.caffe_pb2`, `from caffe import layers as L`, ...) gets
netcompress.pycaffe, then the script runs as `python SCRIPT.py ARGS...` would run it: as `__main__`, with
`sys.argv` its name and arguments, its folder first on the import path (its own modules, a Python layer's
module beside it). Errors in the script print Python's traceback and exit 1; `sys.exit(n)` exits n. Where a real
Caffe is installed, the script still gets netcompress.pycaffe here (plain `python SCRIPT.py` gets Caffe's). The
processes the script starts get it too: the import path and PYTHONPATH lead with pycaffe/importable, whose
`caffe` stands for netcompress.pycaffe (multiprocessing's spawn and forkserver children import the script again,
as python/train.py's solvers do where fork is not the default).
"""
from __future__ import annotations

import os
import runpy
import sys
import traceback
from typing import Sequence

from ..log import LogReaderGone
from ._common import ToolError

__all__ = ["run_script", "main"]

USAGE = """usage: netcompress pycaffe SCRIPT.py [ARGS...]

Run a Caffe-era pycaffe script unchanged: its `import caffe` gets netcompress.pycaffe (caffe.Net, the solvers,
caffe.io, caffe.proto, net_spec, draw, coord_map, Classifier, Detector, Layer), and it runs as
`python SCRIPT.py ARGS...` would."""


def run_script(path: str, args: Sequence[str]) -> int:
    """Run `path` as __main__ with `caffe` standing for netcompress.pycaffe; its exit status."""
    from .. import pycaffe

    from .. import io as ncio

    ncio.check_input_file(path, "Python script")
    if "caffe" in sys.modules and sys.modules["caffe"] is not pycaffe:
        raise ToolError("a module named 'caffe' is already imported in this process; run the script in a fresh "
                        "process")
    from ..pycaffe import importable

    pycaffe.install_as_caffe()
    folder = os.path.dirname(os.path.abspath(path))
    old_argv, old_path, old_env = sys.argv[:], sys.path[:], os.environ.get("PYTHONPATH")
    sys.argv = [path, *args]
    # The script's folder, then `caffe`'s stand-in: in sys.path for multiprocessing's children (they take the
    # parent's path), in PYTHONPATH for other interpreters.
    sys.path[0:0] = [folder, importable.FOLDER]
    os.environ["PYTHONPATH"] = os.pathsep.join([importable.FOLDER, *([old_env] if old_env else [])])
    try:
        with ncio.advice_for("Python"):  # (the script's errors name pycaffe's calls, not the command's flags)
            runpy.run_path(path, run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except LogReaderGone:  # (its solve() stopped and snapshotted for a closed log pipe: the command ends quietly)
        raise
    except Exception:
        # the script's own error: Python's traceback, without this runner's frames
        etype, value, tb = sys.exc_info()
        own = tb
        while own is not None and os.path.abspath(own.tb_frame.f_code.co_filename) != os.path.abspath(path):
            own = own.tb_next
        traceback.print_exception(etype, value, own or tb, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        if old_env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_env


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    return run_script(args[0], args[1:])
