"""CPU threads (issue 21, point 1): OpenMP waits passively, torch's default count unless --threads N
or NETCOMPRESS_THREADS=N, and one INFO line says which."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from netcompress import threads
from netcompress.cli import main as cli_main
from netcompress.errors import NetcompressError

REPO = Path(__file__).resolve().parents[1]


def test_the_default_is_torchs_count_and_each_override_wins_in_turn():
    c = threads.choose_threads(environ={}, default=2)
    assert (c.threads, c.source) == (2, "default")
    assert "torch's default, the CPUs this process may use; --threads N or NETCOMPRESS_THREADS=N" in c.describe()
    c = threads.choose_threads(environ={"OMP_NUM_THREADS": "1"}, default=1)
    assert (c.threads, c.source) == (1, "OMP_NUM_THREADS")
    for bad in ("abc", "0", "-2"):  # (libgomp ignores these; the line said "from OMP_NUM_THREADS")
        c = threads.choose_threads(environ={"OMP_NUM_THREADS": bad}, default=2)
        assert (c.threads, c.source, c.ignored) == (2, "default", bad)
        assert "CPU threads: 2 (torch's default" in c.describe()
        assert f"OMP_NUM_THREADS='{bad}' is no thread count, OpenMP ignored it" in c.describe()
    assert threads.choose_threads(environ={"OMP_NUM_THREADS": "4,2"}, default=4).source == "OMP_NUM_THREADS"
    c = threads.choose_threads(environ={"OMP_NUM_THREADS": "1", "NETCOMPRESS_THREADS": "3"}, default=1)
    assert (c.threads, c.source) == (3, "NETCOMPRESS_THREADS")
    c = threads.choose_threads(4, environ={"NETCOMPRESS_THREADS": "3"}, default=1)
    assert (c.threads, c.source) == (4, "--threads") and c.describe().startswith("CPU threads: 4 (from --threads)")
    for bad in ("0", "-2", "two"):
        with pytest.raises(NetcompressError, match=f"NETCOMPRESS_THREADS: expected a positive number of threads, got '{bad}'"):
            threads.choose_threads(environ={"NETCOMPRESS_THREADS": bad}, default=2)


def test_threads_option_comes_before_the_command():
    assert threads.split_threads_option(["--threads", "3", "train", "--solver", "s"]) == (3, ["train", "--solver", "s"])
    assert threads.split_threads_option(["--threads=2", "info"]) == (2, ["info"])
    assert threads.split_threads_option(["train", "--threads", "3"]) == (None, ["train", "--threads", "3"])
    with pytest.raises(NetcompressError, match="--threads: expected a positive number"):
        threads.split_threads_option(["--threads", "x", "info"])


def test_cli_applies_threads_and_logs_one_line(caplog, capsys):
    old = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="netcompress"):
            assert cli_main(["--threads", "1", "info"]) == 0
        assert torch.get_num_threads() == 1
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU threads:")]
        assert len(lines) == 1 and lines[0].startswith("CPU threads: 1 (from --threads); OpenMP wait policy:")
        assert "CPU threads: 1 (from --threads)" in capsys.readouterr().out  # `info` shows the choice too
        assert cli_main(["--threads", "0", "info"]) == 2
        assert "--threads: expected a positive number of threads, got '0'" in capsys.readouterr().err
    finally:
        torch.set_num_threads(old)


def test_more_threads_than_cpus_are_warned_of(caplog, monkeypatch):
    # (`--threads 1000` on two CPUs ran on with no word: every op's threads take turns on the cores)
    old = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    try:
        with caplog.at_level(logging.INFO, logger="netcompress"):
            threads.configure_threads(2)
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            threads.configure_threads(5)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert said == ["5 CPU threads on the 2 CPUs this process may use: the threads take turns on the cores, "
                        "which is slower than 2"]
    finally:
        torch.set_num_threads(old)


def test_a_fresh_process_waits_passively(tmp_path):
    """`python -m netcompress` sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP, and OpenMP
    takes it (libgomp prints its settings with OMP_DISPLAY_ENV)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                          "NETCOMPRESS_THREADS")}
    env.update(PYTHONPATH=str(REPO), OMP_DISPLAY_ENV="TRUE")
    r = subprocess.run([sys.executable, "-m", "netcompress", "info"], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stderr.splitlines() if "CPU threads:" in l)
    torch_threads = int(re.search(r"  torch threads: (\d+)", r.stdout).group(1))  # what that torch chose
    assert f"CPU threads: {torch_threads} (torch's default" in line
    assert "OpenMP wait policy: PASSIVE (set by netcompress" in line
    if "OPENMP DISPLAY ENVIRONMENT" in r.stderr:  # libgomp (torch's Linux wheels)
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in r.stderr
    # an explicit policy is left alone
    env["OMP_WAIT_POLICY"] = "active"
    r = subprocess.run([sys.executable, "-m", "netcompress", "info"], env=env, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert "OpenMP wait policy: ACTIVE (from the environment's OMP_WAIT_POLICY)" in r.stderr


def test_info_reports_versions_build_threads_and_devices(capsys):
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("versions", "extension netcompress._C", "threads", "devices"):
        assert f"\n{section}\n" in f"\n{out}"
    assert f"  torch: {torch.__version__}" in out
    # compiled or not, and why (recorded by setup.py's build, or said to be unrecorded)
    assert re.search(r"  CUDA kernels: (compiled|not compiled) \(.+\)", out)
    assert f"  torch threads: {torch.get_num_threads()}" in out
    assert "  CUDA available: " in out
    assert re.search(r"  CPU convolution algorithm: (NNPACK's FFT tiles for|ATen's convolution \(oneDNN\) for every)", out)
    assert re.search(r"  CPU convolution layout: (channels-last where|NCHW for every)", out)
    assert re.search(r"  CPU inner products: (oneDNN for float32 products|BLAS for every product)", out)
    assert re.search(r"  CPU direct sums: (AVX-512|AVX2|x86-64 baseline \(SSE2\) or scalar) vectors \(", out)
    assert re.search(r"  CPU NNPACK calls: (called directly|through ATen's|this PyTorch has no NNPACK)", out)
