#!/usr/bin/env python3
"""snip_prune.py: netcompress.tools.snip.main as a script.

Same as `netcompress snip_prune ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.snip as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.snip as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.main))
