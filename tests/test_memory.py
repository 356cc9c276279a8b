"""CPU memory for the commands (netcompress/memory.py): freed blocks kept for the next iteration on glibc,
the environment's own choices left alone, one log line."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netcompress import memory
from netcompress.cli import main as cli_main
from netcompress.errors import NetcompressError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env, keep, reason", [
    ({}, True, ""),
    ({"NETCOMPRESS_MALLOC": "keep"}, True, ""),
    ({"NETCOMPRESS_MALLOC": " System "}, False, "NETCOMPRESS_MALLOC=system"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, False, "GLIBC_TUNABLES sets them"),
    ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, True, ""),
    ({"MALLOC_ARENA_MAX": "2"}, True, ""),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, False, "MALLOC_TRIM_THRESHOLD_ sets them"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, False, "jemalloc is preloaded"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}, False, "tcmalloc is preloaded"),
])
def test_choice_follows_the_environment(env, keep, reason):
    c = memory.choose_memory(env, glibc=True)
    assert (c.keep, c.reason) == (keep, reason)
    assert c.describe().startswith("CPU memory: ")
    assert (reason in c.describe()) if reason else "32 MiB are kept" in c.describe()


def test_not_glibc_is_left_alone_and_a_bad_value_is_an_error():
    assert memory.choose_memory({}, glibc=False) == memory.MemoryChoice(False, "not glibc")
    with pytest.raises(NetcompressError, match="NETCOMPRESS_MALLOC: expected 'keep' or 'system', got 'always'"):
        memory.choose_memory({"NETCOMPRESS_MALLOC": "always"}, glibc=True)


_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from netcompress.memory import configure_memory
    print(configure_memory().keep)
    def in_heap(ptr):  # the brk heap of the main arena, as /proc/self/maps names it
        for line in open("/proc/self/maps"):
            if line.rstrip().endswith("[heap]"):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                return lo <= ptr < hi
        return False
    print(in_heap(torch.empty(30 << 18).data_ptr()))  # 30 MiB: from the heap below the 32 MiB threshold
    def step():
        blocks = [torch.empty(6 << 20) for _ in range(4)]  # four 24 MiB tensors alive together, as activations
        for b in blocks:
            b.fill_(1.0)
    for _ in range(5):  # glibc settles its heap within the first few steps
        step()
    faults = []
    for _ in range(9):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(sorted(faults)[len(faults) // 2])  # the median step
""")


def _run(tmp_path, **env) -> tuple[str, str, float]:
    """(settings applied, a 30 MiB block came from the heap, page faults of the median step), as printed. (The
    median: now and then one step faults a whole 24 MiB block in again whatever malloc does, the kernel
    reclaiming it (this machine runs DAMON's kdamond); the mean of five steps was then 1,228.8, one block's
    6,144 pages over five, in 2 of about 20 runs under the suite's load.)"""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "NETCOMPRESS_MALLOC"))}
    r = subprocess.run([sys.executable, "-c", _FAULTS], env={**base, "PYTHONPATH": str(REPO), **env},
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    keep, heap, faults = r.stdout.split()
    return keep, heap, float(faults)


@pytest.mark.skipif(not memory._is_glibc(), reason="the malloc settings are glibc's (Linux)")
def test_freed_blocks_are_reused_without_page_faults(tmp_path):
    """Four 24 MiB tensors alive together, freed at the end of each step (a training step's pattern):
    with the commands' settings they stay in the heap and the next step reuses them without a page
    fault. Under glibc's defaults the same steps fault their pages in again whenever the freed top
    of the heap exceeds the trim threshold (at most 64 MiB) or a block is above the mmap threshold,
    which depends on the process's history (0 to 24,576 faults a step in runs of this script;
    about 1,000 a step for LeNet at batch 64 in `netcompress time`), so that side is shown by where
    a fresh 30 MiB block comes from: the heap with the settings, its own mapping without."""
    keep, heap, kept_faults = _run(tmp_path)
    assert (keep, heap) == ("True", "True")
    assert kept_faults < 50, kept_faults
    # glibc's own settings: a 30 MiB block is mapped on its own (mmap threshold 128 KiB at the start)
    assert _run(tmp_path, NETCOMPRESS_MALLOC="system")[:2] == ("False", "False")


def test_commands_log_the_choice_and_info_shows_it(caplog, capsys, monkeypatch):
    monkeypatch.setenv("NETCOMPRESS_MALLOC", "system")
    with caplog.at_level(logging.INFO, logger="netcompress"):
        assert cli_main(["info"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU memory:")]
    assert lines == ["CPU memory: the C library's malloc settings as they are (NETCOMPRESS_MALLOC=system)"]
    assert "memory\n  chosen: CPU memory: the C library's malloc settings as they are" in capsys.readouterr().out
    monkeypatch.setenv("NETCOMPRESS_MALLOC", "often")
    assert cli_main(["info"]) == 1
    assert "netcompress info: error: NETCOMPRESS_MALLOC: expected 'keep' or 'system', got 'often'" in capsys.readouterr().err
