"""The `netcompress` command: dispatches to the entries of `netcompress.commands.COMMANDS`.

Every subcommand is `main(argv) -> int`, testable in process; output follows Caffe's log format.
Errors go through one boundary (`netcompress.boundary`): an error caused by the input prints one
line, `netcompress <command>: error: <message>`, and exits 1; a bug prints one line and the path
of its saved traceback (`--debug`, anywhere on the line, prints it inline).
"""
from __future__ import annotations

import sys
from typing import Sequence

from .threads import configure_threads, prepare_environment, split_threads_option

prepare_environment()  # before torch loads OpenMP: idle workers wait passively (netcompress/threads.py)

import torch  # noqa: E402

from .boundary import guarded, pop_debug_flag, set_debug  # noqa: E402
from .commands import COMMANDS, SECTIONS, load_command  # noqa: E402
from .errors import NetcompressError  # noqa: E402
from .log import setup_logging  # noqa: E402
from .memory import configure_memory  # noqa: E402


__all__ = ["main"]


def _usage() -> str:
    lines = ["usage: netcompress [--threads N] <command> [args]", "",
             "--threads N: CPU threads (default: the CPUs this process may use; or NETCOMPRESS_THREADS)", "",
             "commands:"]
    listed = set()
    for title, names in SECTIONS:
        lines.append(f"  {title}:")
        for name in names:
            lines.append(f"    {name:<24} {COMMANDS[name].help}")
            listed.add(name)
    rest = sorted(set(COMMANDS) - listed)  # (tests/test_cli.py keeps this empty)
    if rest:
        lines.append("  other:")
        lines += [f"    {name:<24} {COMMANDS[name].help}" for name in rest]
    lines.append("")
    lines.append("`netcompress <command> --help` describes each command; `--debug` prints the "
                 "traceback of an unexpected error.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    set_debug(debug)
    setup_logging()
    try:
        threads, argv = split_threads_option(argv)
    except NetcompressError as e:
        print(f"netcompress: {e}\n\n{_usage()}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "version"):
        from . import __version__
        print(f"netcompress {__version__} (torch {torch.__version__})")
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"netcompress: unknown command '{cmd}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    func = load_command(cmd)

    args = argv[1:]
    asks_help = any(a in ("-h", "--help") for a in (args[:args.index("--")] if "--" in args else args))

    def run() -> int:
        if COMMANDS[cmd].computes and not asks_help:  # (--help: the usage alone, no set-up lines)
            configure_threads(threads)
            configure_memory()  # freed CPU blocks kept for the next iteration (netcompress/memory.py)
        return int(func(argv[1:]) or 0)
    # One line per error (the exit code may be an error's own, e.g. a distributed worker's).
    code = guarded(run, f"netcompress-{cmd}", f"netcompress {cmd}: error: ", interrupted=f"netcompress {cmd}: interrupted")
    dist_mod = sys.modules.get("netcompress.distributed")
    if dist_mod is not None and dist_mod.group_left_open():
        dist_mod.leave(code)  # a rank under torchrun / srun: ends here, its process group open
    return code


if __name__ == "__main__":
    sys.exit(main())
