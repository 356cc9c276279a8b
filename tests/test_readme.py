"""Every command block of README.md runs, in order, on a fresh copy of the repository's examples
(issue 21, point 4): each ```bash block as one bash script (from the copy's root, `netcompress`
being this checkout's `python -m netcompress`), the ```python block with python; the prototxt block
parses, and each ```text synopsis (placeholders and [optional] arguments, with runnable versions in
the worked examples it links) names real commands.

Two tables keep this honest, and each of their rules must match the README (so they cannot go stale):
- NOT_RUN: commands that cannot run in a test, with the reason (installing, the suite itself, GPUs,
  several machines, a file the repository does not ship);
- SHORTEN: the documented shortenings that keep the test to minutes (fewer iterations; the file
  names that carry the iteration count follow).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format

from netcompress.commands import COMMANDS
from netcompress.proto import caffe_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

NOT_RUN: list[tuple[str, str]] = [
    (r"^pip install ", "installs netcompress: the test runs in the installed package"),
    (r"^python -m pytest", "the test suite itself"),
    (r"--gpu all|--gpu 0,1", "needs CUDA devices" if torch.cuda.device_count() < 2 else ""),
    (r"^netcompress device_query --gpu 0", "needs a CUDA device" if torch.cuda.device_count() < 1 else ""),
    (r"^torchrun --nnodes=2", "needs two machines"),
    (r"^torchrun --nproc_per_node", "a torchrun launch of 4 processes; tests/distributed covers the torchrun "
                                    "environment, and --cpu-procs (run) the same training"),
    (r"^netcompress import_pth densenet-100\.pth\.tar", "needs MicroNet's published checkpoint, not shipped"),
    (r"^netcompress micronet_score deploy\.prototxt m\.caffemodel", "needs import_pth's model (above)"),
    (r"^netcompress (bn_reestimate train_val|micronet_merge train_val|report deploy\.prototxt deploy\.caffemodel)",
     "needs a quantized MicroNet student: examples/micronet/run.py trains one and runs these (minutes)"),
]

# (pattern, replacement): applied to every command (and the python block) in order
SHORTEN: list[tuple[str, str]] = [
    (r"^netcompress pipeline$", "netcompress pipeline --ref-iters 30 --dns-iters 30 --inq-iters 6"),
    (r"(--solver examples/(mnist/lenet|kd/student_kd)_solver\.prototxt)", r"\1 --iterations 30"),
    (r"--cpu-procs 4", "--cpu-procs 2"),
    (r"_iter_5000\b", "_iter_30"),   # the 5,000-iteration models, trained for 30 here
    (r"--iterations 10$", "--iterations 2"),
    (r"--generations 2 --population 2 --iters 100", "--generations 1 --population 1 --iters 3"),
    (r'device="cpu"\)', 'device="cpu", max_iter=30)'),
]


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced block of README.md."""
    out, lang, lines, start = [], None, [], 0
    for i, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, lines, start = line[3:].strip(), [], i
            else:
                out.append((lang, "\n".join(lines), start))
                lang = None
        elif lang is not None:
            lines.append(line)
    return out


def shell_commands(text: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped, and
    `a && b` split into its commands."""
    joined = re.sub(r"\\\n\s*", " ", text)
    cmds = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            cmds += [c.strip() for c in line.split(" && ")]
    return cmds


def not_run_reason(cmd: str, used: set[int]) -> str:
    for k, (pattern, reason) in enumerate(NOT_RUN):
        if re.search(pattern, cmd):
            used.add(k)
            return reason
    return ""


def shorten(cmd: str, used: set[int]) -> str:
    for k, (pattern, repl) in enumerate(SHORTEN):
        new = re.sub(pattern, repl, cmd)
        if new != cmd:
            used.add(k)
            cmd = new
    return cmd


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh copy of what the README's commands read (examples/), with `netcompress` on PATH
    running this checkout."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "examples", root / "examples",
                    ignore=shutil.ignore_patterns("*.caffemodel", "*.solverstate", "*.nc.npz"))
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "netcompress"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m netcompress "$@"\n')
    shim.chmod(0o755)
    return root


def _env(clone: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{clone / '.bin'}:{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


@pytest.mark.slow  # every README command, shortened: a few minutes on 2 shared cores
def test_every_readme_block_runs_in_order(clone):
    blocks = readme_blocks()
    bash = [b for b in blocks if b[0] == "bash"]
    python = [b for b in blocks if b[0] == "python"]
    assert len(bash) >= 7 and len(python) == 1
    not_run_used: set[int] = set()
    shorten_used: set[int] = set()
    skipped: list[str] = []
    synopses = 0
    for lang, text, line in blocks:
        if lang == "bash":
            run = []
            for cmd in shell_commands(text):
                reason = not_run_reason(cmd, not_run_used)
                if reason:
                    skipped.append(f"README.md:{line}: {cmd[:60]}: {reason}")
                else:
                    run.append(shorten(cmd, shorten_used))
            if not run:
                continue
            script = "set -euo pipefail\n" + "\n".join(run) + "\n"
            r = subprocess.run(["bash", "-c", script], cwd=clone, env=_env(clone), capture_output=True, text=True,
                               timeout=900)
            assert r.returncode == 0, (f"README.md:{line}: the block failed (exit {r.returncode}):\n{script}\n"
                                       f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}")
        elif lang == "python":
            code = shorten(text, shorten_used)
            r = subprocess.run([sys.executable, "-c", code], cwd=clone, env=_env(clone), capture_output=True,
                               text=True, timeout=600)
            assert r.returncode == 0, f"README.md:{line}: the python block failed:\n{r.stderr[-5000:]}"
        elif lang == "text":  # a synopsis (placeholders, optional arguments): it names real commands
            for cmd in shell_commands(text):
                name = cmd.split()[1]
                assert cmd.startswith("netcompress ") and name in COMMANDS, f"README.md:{line}: {cmd}"
                synopses += 1
        elif lang == "" and "layer {" in text:
            net = text_format.Parse(text, pb.NetParameter())  # the prototxt snippet parses
            assert [l.type for l in net.layer] == ["DNSConvolution", "INQInnerProduct"]
    # every rule of the two tables still matches something in the README
    assert not_run_used == {k for k, (_, reason) in enumerate(NOT_RUN) if reason}, not_run_used
    assert shorten_used == set(range(len(SHORTEN))), shorten_used
    assert synopses >= 5
    # what the blocks wrote (a few checks that the commands did their work)
    run = clone / "runs" / "lenet_pipeline"
    assert (run / "summary.json").is_file() and (run / "data" / "mnist5k_train_lmdb").is_dir()
    for f in ("dns_normal.caffemodel", "inq_normal.caffemodel", "inq_raw.caffemodel", "lenet.txt", "lenet.binary",
              "decoded.caffemodel", "lenet48.binary", "decoded48.caffemodel", "wide.caffemodel", "deep.caffemodel",
              "mutant/mutation.json", "search/search.json"):
        assert (run / f).exists(), f
    for f in ("examples/mnist/lenet_iter_30.caffemodel", "lenet_train.log", "curves.png", "lenet.prototxt",
              "deploy.prototxt", "runs/kd/teacher_t.caffemodel", "runs/kd/student_kd_iter_30.caffemodel",
              "runs/kd/logits.h5", "copy.caffemodel"):
        assert (clone / f).exists(), f
    print("\n".join(skipped))
