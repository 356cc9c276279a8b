#!/usr/bin/env python3
"""make_epsilon_resnet.py: netcompress.tools.eresnet.make_epsilon_resnet_main as a script.

Same as `netcompress make_epsilon_resnet ...`; run with -h for the arguments.
"""
import os
import sys

try:
    import netcompress.tools.eresnet as _tool
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import netcompress.tools.eresnet as _tool

if __name__ == "__main__":
    from netcompress.boundary import script_main  # one line per error, as `netcompress {command}`

    sys.exit(script_main(_tool.make_epsilon_resnet_main))
