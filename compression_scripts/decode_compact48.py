#!/usr/bin/env python3
"""decode_compact48.py: the reference script's name and arguments over netcompress.tools.compact.decode_compact48_main.

Same as `netcompress decode_compact48 ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.compact as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.compact as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.decode_compact48_main))
