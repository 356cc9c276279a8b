#!/usr/bin/env python3
"""net2deeper.py: Net2DeeperNet surgery over netcompress.tools.net2net.net2deeper_main.

Same as `netcompress net2deeper ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.net2net as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.net2net as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.net2deeper_main))
