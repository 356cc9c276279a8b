"""The error boundary of every command line: `netcompress <command>`, the tools' `run_main` and the
`compression_scripts/` shims.

- A `NetcompressError` (bad input: a file, a net, a parameter) prints its message as one line on
  stderr and exits 1 (or the error's own `exit_code`). No traceback: the message names the file,
  layer or field.
- An `OSError` that no reader or writer turned into a `FileError` prints the path and what the
  error means (read-only, no space, name too long, symlink loop) and exits 1.
- Running out of memory (Python's MemoryError, torch's CPU allocator or CUDA out of memory) prints one line
  with the allocator's own words and what to change, and exits 1: the net or the batch is too large for the
  machine, which is the input's doing, not a bug.
- Anything else is a bug of netcompress: one line with the exception, and the path of a file that
  holds the traceback; `--debug` (or NETCOMPRESS_DEBUG=1) prints the traceback inline instead.
- Ctrl-C exits 130 with one line.
- Output piped to a reader that closes early (`| head`) ends the command quietly with status 141, as SIGPIPE
  ends a shell tool; so does training whose log's reader closed (`train ... 2>&1 | head`), once it has stopped and
  snapshotted.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from typing import Callable, Sequence

from .errors import NetcompressError, describe_os_error
from .log import LogReaderGone

__all__ = ["guarded", "script_main", "pop_debug_flag", "set_debug", "debug_enabled", "DEBUG_FLAG"]

DEBUG_FLAG = "--debug"
_debug = False


def set_debug(on: bool) -> None:
    """Print tracebacks inline (the `--debug` flag)."""
    global _debug
    _debug = bool(on)


def debug_enabled() -> bool:
    return _debug or os.environ.get("NETCOMPRESS_DEBUG", "").strip() not in ("", "0")


def pop_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` tokens (before a `--`), and whether there was one."""
    out, found, rest = [], False, False
    for a in argv:
        if not rest and a == DEBUG_FLAG:
            found = True
            continue
        rest = rest or a == "--"
        out.append(a)
    return out, found


def _save_traceback(prog: str, text: str) -> str | None:
    """Write `text` to a new file under the temporary folder; its path, or None if that fails."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prog)[:40] or "netcompress"
    try:
        fd, path = tempfile.mkstemp(prefix=f"netcompress-{safe}-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=".traceback.txt")
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        return path
    except OSError:
        return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


_OOM_SIGNS = ("can't allocate memory", "out of memory")  # torch's CPU allocator; CUDA's


def _out_of_memory(e: BaseException) -> str | None:
    """The allocator's message (its first line) when `e` says memory ran out, else None."""
    if isinstance(e, MemoryError):
        return str(e) or "MemoryError"
    if isinstance(e, RuntimeError) and any(sign in str(e) for sign in _OOM_SIGNS):
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def guarded(body: Callable[[], int | None], prog: str, prefix: str, interrupted: str | None = None) -> int:
    """Run `body()` and return its exit status, turning every exception into one line on stderr
    (see the module docstring). `prog` names the command in saved tracebacks; `prefix` starts
    every message (`netcompress test: error: `, `Error: `); `interrupted` is the line for Ctrl-C
    (default: the prefix and "interrupted")."""
    from .io import advice_for  # (errors say which flag takes a file given in another's place)

    try:
        with advice_for("command line"):
            return int(body() or 0)
    except NetcompressError as e:
        _flush()
        if debug_enabled():
            traceback.print_exc(file=sys.stderr)
        print(f"{prefix}{e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        _flush()
        print(interrupted or f"{prefix}interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if isinstance(e, LogReaderGone) or (isinstance(e, BrokenPipeError) and _stdout_reader_gone()):
            # (`netcompress parse_model ... | head`: the reader of the output has all it wanted; stop quietly, with
            # the status of a shell tool that SIGPIPE ended, and without Python's complaint when it flushes at exit)
            for stream in (sys.stdout, sys.stderr) if isinstance(e, LogReaderGone) else (sys.stdout,):
                try:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
                except (OSError, ValueError):
                    pass
            return 141
        _flush()
        if debug_enabled():
            traceback.print_exc(file=sys.stderr)
        paths = [p for p in (e.filename, getattr(e, "filename2", None)) if p]
        where = (" -> ".join(os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in paths) + ": ") if paths else ""
        print(f"{prefix}{where}{describe_os_error(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so, and keep the traceback
        _flush()
        oom = _out_of_memory(e)
        if oom is not None:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            print(f"{prefix}out of memory: {oom} (more than the machine or GPU has: lower a net's batch_size, "
                  "or check the layers' sizes and the sizes the command was given)", file=sys.stderr)
            return 1
        text = traceback.format_exc()
        what = f"{type(e).__name__}: {_one_line(e)}" if str(e) else type(e).__name__
        if debug_enabled():
            sys.stderr.write(text)
            print(f"{prefix}unexpected {what} (a bug in netcompress; the traceback is above)", file=sys.stderr)
            return 1
        saved = _save_traceback(prog, text)
        if saved is None:
            sys.stderr.write(text)
            where = "the traceback is above"
        else:
            where = f"the traceback is in {saved}; {DEBUG_FLAG} prints it"
        print(f"{prefix}unexpected {what} (a bug in netcompress; {where})", file=sys.stderr)
        return 1


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end has been closed (its write end polls POLLERR)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # (no poll on this platform, or no usable stdout)
        return False


def _flush() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def script_main(main: Callable[[list[str]], int], argv: Sequence[str] | None = None,
                prog: str | None = None) -> int:
    """Run a `compression_scripts/` shim's `main(argv)` inside the boundary (prefix `Error: `, the
    reference scripts' convention); `--debug` anywhere in argv prints tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    args, debug = pop_debug_flag(args)
    set_debug(debug)
    name = prog or os.path.basename(sys.argv[0] or "script")
    return guarded(lambda: main(args), name, "Error: ")
