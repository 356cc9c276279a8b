#!/usr/bin/env python3
"""inq_to_normal.py: the reference script's name and arguments over netcompress.tools.convert.inq_to_normal_main.

Same as `netcompress inq_to_normal ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.convert as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.convert as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.inq_to_normal_main))
