#!/usr/bin/env python3
"""dump_logits.py: `netcompress dump_logits` as a script, over netcompress.tools.kd.dump_logits_main.

Same as `netcompress dump_logits ...`; run with -h for the arguments.
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

    sys.exit(script_main(_tool.dump_logits_main))
