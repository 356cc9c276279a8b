#!/usr/bin/env python3
"""rename_layers.py: `netcompress rename_layers` as a script, over netcompress.tools.kd.rename_layers_main.

Same as `netcompress rename_layers ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.kd as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.kd as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.rename_layers_main))
