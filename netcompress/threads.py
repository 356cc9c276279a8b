"""CPU threads for the `netcompress` commands: how many, and how idle OpenMP workers wait.

torch's OpenMP workers spin (busy-wait) between parallel regions by default. Where the cores are
shared (another job, other users), a spinning worker holds a core that its partner needs, and every
parallel region then waits for a descheduled thread: LeNet training with torch's 2 default threads
ran 7-8x slower than with 1 thread beside one other process (issue 21). So the commands ask OpenMP to
wait passively (`OMP_WAIT_POLICY=PASSIVE`, unless the environment already sets a policy). OpenMP reads
the variable once, when torch loads it, so `prepare_environment()` runs when `netcompress.cli` is
imported, before that module imports torch (`python -m netcompress` and the `netcompress` script
both import it first). The thread count stays torch's default (the CPUs this process may use) unless
`--threads N` or `NETCOMPRESS_THREADS=N` (or OpenMP's own `OMP_NUM_THREADS`) says otherwise. The
choice is logged as one INFO line.

This module imports torch only inside functions.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from .errors import NetcompressError
from .log import get_logger

log = get_logger("threads")

__all__ = ["ENV_THREADS", "ThreadChoice", "prepare_environment", "choose_threads", "configure_threads", "usable_cpus",
           "current_choice", "split_threads_option", "threads_per_process"]

ENV_THREADS = "NETCOMPRESS_THREADS"
_WAIT = "OMP_WAIT_POLICY"

# What prepare_environment() found: whether it set the wait policy, and whether torch (hence
# OpenMP) was already loaded, in which case a policy set now cannot take effect.
_prepared: dict[str, bool] = {"set_policy": False, "torch_was_loaded": False, "ran": False}
_current: list["ThreadChoice"] = []  # the last choice configure_threads applied


def prepare_environment() -> None:
    """Ask OpenMP to wait passively unless the environment chose a policy; call before torch loads."""
    if _prepared["ran"]:
        return
    _prepared["ran"] = True
    _prepared["torch_was_loaded"] = "torch" in sys.modules
    if _WAIT not in os.environ:
        os.environ[_WAIT] = "PASSIVE"
        _prepared["set_policy"] = True


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads torch uses, who chose it, and OpenMP's wait policy."""

    threads: int
    source: str        # "--threads", ENV_THREADS, "OMP_NUM_THREADS" or "default"
    wait_policy: str   # the policy OpenMP was loaded with, as far as known ("" if unknown)
    wait_note: str     # where the policy came from
    ignored: str = ""  # an OMP_NUM_THREADS that is no thread count (OpenMP ignores it), as set

    def describe(self) -> str:
        """The log line's text."""
        how = {"--threads": "from --threads",
               ENV_THREADS: f"from {ENV_THREADS}",
               "OMP_NUM_THREADS": "from OMP_NUM_THREADS",
               "default": f"torch's default, the CPUs this process may use; --threads N or {ENV_THREADS}=N "
                          "changes it"}[self.source]
        if self.ignored:
            how += f"; OMP_NUM_THREADS='{self.ignored}' is no thread count, OpenMP ignored it"
        return f"CPU threads: {self.threads} ({how}); OpenMP wait policy: {self.wait_policy or '?'} ({self.wait_note})"


def _positive(value: str, where: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise NetcompressError(f"{where}: expected a positive number of threads, got '{value}'")
    return n


def choose_threads(requested: int | None = None, environ: dict | None = None,
                   default: int | None = None) -> ThreadChoice:
    """The thread count and its source: `requested` (--threads), else NETCOMPRESS_THREADS, else
    OMP_NUM_THREADS (torch already follows it), else `default` (torch's current count)."""
    env = os.environ if environ is None else environ
    ignored = ""
    if requested is not None:
        n, source = _positive(str(requested), "--threads"), "--threads"
    elif env.get(ENV_THREADS, "").strip():
        n, source = _positive(env[ENV_THREADS].strip(), ENV_THREADS), ENV_THREADS
    else:
        if default is None:
            import torch
            default = torch.get_num_threads()
        omp = env.get("OMP_NUM_THREADS", "").strip()
        n, source = default, ("OMP_NUM_THREADS" if omp else "default")
        first = omp.split(",")[0].strip()  # (OpenMP's nested form "4,2": the first level's count)
        if omp and not (first.isdigit() and int(first) > 0):
            source, ignored = "default", omp
    policy = env.get(_WAIT, "")
    if _prepared["torch_was_loaded"]:
        note = "torch was loaded before netcompress.cli, so OpenMP kept the policy it started with"
        policy = ""
    elif _prepared["set_policy"]:
        note = "set by netcompress: idle workers sleep instead of spinning, so shared cores do not stall"
    elif policy:
        note = f"from the environment's {_WAIT}"
    else:
        note = "OpenMP's default"
    return ThreadChoice(n, source, policy.upper(), note, ignored)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Apply the choice of `choose_threads` to torch and log it (one INFO line, and a warning for more threads
    than CPUs)."""
    import torch

    choice = choose_threads(requested)
    if choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    log.info("%s", choice.describe())
    cpus = usable_cpus()
    if choice.threads > cpus:  # (`--threads 64` on a 2-CPU machine: every op's threads queue for the cores)
        log.warning("%d CPU threads on the %d CPU%s this process may use: the threads take turns on the cores, "
                    "which is slower than %d", choice.threads, cpus, "s" * (cpus > 1), cpus)
    _current[:] = [choice]
    return choice


def threads_per_process(nprocs: int, choice: ThreadChoice | None = None) -> int:
    """CPU threads for each of `nprocs` processes that share this machine (`train --cpu-procs N`'s ranks): the
    count chosen (--threads, NETCOMPRESS_THREADS, OMP_NUM_THREADS) for each, as OMP_NUM_THREADS reaches each of
    torchrun's processes; by default this process's threads (torch's count: its CPUs, or what a script set with
    torch.set_num_threads) shared out among them (each took every CPU)."""
    choice = choice or current_choice()
    if choice.source != "default":
        return choice.threads
    return max(1, min(choice.threads, usable_cpus()) // max(1, nprocs))


def current_choice() -> "ThreadChoice":
    """What configure_threads last applied (or, in a process that never called it, what it would)."""
    return _current[0] if _current else choose_threads()


def split_threads_option(argv: list[str]) -> tuple[int | None, list[str]]:
    """Take the global `--threads N` (or `--threads=N`) from the front of `argv` (before the
    command); returns (N or None, the rest)."""
    if argv and argv[0].startswith("--threads"):
        head = argv[0]
        if head == "--threads":
            if len(argv) < 2:
                raise NetcompressError("--threads: expected a number of threads before the command")
            return _positive(argv[1], "--threads"), argv[2:]
        if head.startswith("--threads="):
            return _positive(head.split("=", 1)[1], "--threads"), argv[1:]
    return None, argv
