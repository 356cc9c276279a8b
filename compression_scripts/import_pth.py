#!/usr/bin/env python3
"""import_pth.py: netcompress.tools.micronet.import_pth_main as a script.

Same as `netcompress import_pth ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.micronet as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.micronet as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.import_pth_main))
