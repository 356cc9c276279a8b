"""pycaffe's NCCL: solvers in separate processes trained as one, the way BVLC's python/train.py drives them.

The script below follows train.py's calls (NCCL.new_uid in the parent, a multiprocessing.Process per solver,
set_solver_count / set_solver_rank / set_multiprocess before the solver, NCCL(solver, uid), bcast,
add_callback(nccl) and, with layer_wise_reduce, net.after_backward(nccl)) on CPU processes (gloo), and must train
exactly as `netcompress train --cpu-procs 2` does (which tests/distributed/test_distributed.py holds to one
process with twice the batch).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

import netcompress.pycaffe as caffe
from netcompress.cli import main as cli_main
from netcompress.pycaffe.solver import _init_method
from test_distributed import ITERS, B, make_solver, model_blobs, write_solver

SCRIPT = textwrap.dedent('''
    import multiprocessing
    import sys

    import numpy as np

    import caffe


    def run_solver(solver_file, uid, ranks, rank, out):
        caffe.set_mode_cpu()
        caffe.set_solver_count(ranks)
        caffe.set_solver_rank(rank)
        caffe.set_multiprocess(True)
        solver = caffe.SGDSolver(solver_file)
        before = {k: v[0].data.copy() for k, v in solver.net.params.items()}
        nccl = caffe.NCCL(solver, uid)
        nccl.bcast()
        after = {k: v[0].data.copy() for k, v in solver.net.params.items()}
        solver.add_callback(nccl)
        if solver.param.layer_wise_reduce:
            solver.net.after_backward(nccl)
        solver.step(solver.param.max_iter)
        trained = {k: v[0].data.copy() for k, v in solver.net.params.items()}
        np.savez(f"{out}/rank{rank}.npz", **{f"before/{k}": v for k, v in before.items()},
                 **{f"bcast/{k}": v for k, v in after.items()}, **{f"trained/{k}": v for k, v in trained.items()})


    if __name__ == "__main__":
        solver_file, ranks, out, start_method = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
        uid = caffe.NCCL.new_uid()
        assert isinstance(uid, bytes)
        ctx = multiprocessing.get_context(start_method)
        procs = [ctx.Process(target=run_solver, args=(solver_file, uid, ranks, r, out)) for r in range(ranks)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        sys.exit(max(p.exitcode for p in procs))
''')


@pytest.mark.parametrize("start_method", ["fork", "spawn"])  # spawn: the children import the script again
def test_train_py_flow_trains_as_the_cli_does(workdir, start_method):
    script = workdir / "train_like_train_py.py"
    script.write_text(SCRIPT)
    prefix = f"py_{start_method}"
    solver = write_solver(workdir, make_solver(workdir, B, prefix), f"{prefix}_solver.prototxt")
    out = workdir / f"dump_{start_method}"
    out.mkdir()
    rendezvous = set(Path(tempfile.gettempdir()).glob("netcompress-nccl-*"))
    done = subprocess.run([sys.executable, "-m", "netcompress", "pycaffe", str(script), solver, "2", str(out),
                           start_method], capture_output=True, text=True, timeout=300, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(Path(tempfile.gettempdir()).glob("netcompress-nccl-*")) <= rendezvous  # the uid's file is gone
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    names = [k.split("/", 1)[1] for k in ranks[0] if k.startswith("trained/")]
    # The ranks drew their own fillers (seed + rank); bcast gave every rank rank 0's weights.
    assert any(not np.array_equal(ranks[0][f"before/{n}"], ranks[1][f"before/{n}"]) for n in names)
    for n in names:
        np.testing.assert_array_equal(ranks[1][f"bcast/{n}"], ranks[0][f"before/{n}"], err_msg=n)
        np.testing.assert_array_equal(ranks[1][f"trained/{n}"], ranks[0][f"trained/{n}"], err_msg=n)
    # Only rank 0 logged and snapshotted, as Caffe's root solver (glog's third field is the process id).
    assert "Data-parallel training on 2 processes (gloo)" in done.stderr
    solver_pids = {line.split()[2] for line in done.stderr.splitlines()
                   if line.startswith("I") and any(f" {m}.py:" in line for m in ("net", "data", "solver"))}
    assert len(solver_pids) == 1, solver_pids
    assert (workdir / f"{prefix}_iter_{ITERS}.caffemodel").is_file()
    # The same training as the command's two processes, bit for bit (masks included).
    if not (workdir / f"cli_iter_{ITERS}.caffemodel").is_file():
        cli_solver = write_solver(workdir, make_solver(workdir, B, "cli"), "cli_solver.prototxt")
        assert cli_main(["train", "--solver", cli_solver, "--cpu-procs", "2"]) == 0
    got = model_blobs(workdir / f"{prefix}_iter_{ITERS}.caffemodel")
    want = model_blobs(workdir / f"cli_iter_{ITERS}.caffemodel")
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert 0 < got["conv1[2]"].sum() < got["conv1[2]"].size  # DNS pruned for real


def test_nccl_uid_and_misuse(workdir, monkeypatch):
    assert caffe.has_nccl()
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, bytes) and uid != caffe.NCCL.new_uid()
    solver = caffe.SGDSolver(write_solver(workdir, make_solver(workdir, B, "misuse"), "misuse_solver.prototxt"))
    # The count and rank decide the solver's share of the data, so they must be set before the solver exists.
    monkeypatch.setitem(caffe._base._state, "solver_count", 2)
    with pytest.raises(ValueError, match="before creating the solver"):
        caffe.NCCL(solver, uid)
    monkeypatch.setitem(caffe._base._state, "solver_rank", 2)
    with pytest.raises(ValueError, match="is not below"):
        caffe.SGDSolver(make_solver(workdir, B, "misuse"))
    with pytest.raises(ValueError, match="at least 1"):
        caffe.set_solver_count(0)
    with pytest.raises(TypeError, match="a caffe solver"):
        caffe.NCCL(object(), uid)
    with pytest.raises(TypeError, match="on_start and on_gradients_ready"):
        solver.add_callback(lambda: None)
    net = caffe.Net(str(workdir / "net_b4.prototxt"), caffe.TEST)
    with pytest.raises(ValueError, match="a solver's net"):
        net.after_backward(caffe.NCCL.__new__(caffe.NCCL))
    with pytest.raises(ValueError, match="not a uid"):
        _init_method(b"tcp://somewhere")
