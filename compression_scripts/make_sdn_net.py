#!/usr/bin/env python3
"""make_sdn_net.py: netcompress.tools.sdn.make_sdn_net_main as a script.

Same as `netcompress make_sdn_net ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.sdn as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.sdn as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.make_sdn_net_main))
