"""Data-parallel training on CPU processes (gloo): the issue's guarantees.

2 processes x batch B train exactly like 1 process x batch 2B (same weights within float
tolerance, identical masks), every rank holds the same masks, the snapshot check fails loudly
when they differ, and snapshots resume on any number of processes. NCCL cannot run here.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_workers
from db_helpers import write_datum_lmdb
from netcompress import io as ncio
from netcompress.cli import main as cli_main
from netcompress.distributed import (GradientAllReduce, WorkerError, first_host, launch,
                                     launcher_env)
from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

REPO = Path(__file__).resolve().parents[2]

NET = """
name: "dp"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 }
        data_param { source: "@TRAIN@" batch_size: @B@ backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 }
        data_param { source: "@TEST@" batch_size: 10 backend: LMDB } }
layer { name: "conv1" type: "DNSConvolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" }
                            bias_filler { type: "uniform" min: -0.1 max: 0.1 } }
        dns_convolution_param { gamma: 0.02 power: 1 c_rate: 0.3
          weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "INQInnerProduct" bottom: "pool1" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
        inq_inner_product_param { portion: 0 portion: 0.5 num_quantum_values: 7
          weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip1" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""

B = 4          # per-process batch of the 2-process runs
ITERS = 6
SNAP = 3
RTOL, ATOL = 1e-5, 1e-7


DROPOUT = ('layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" '
           'dropout_param { dropout_ratio: 0.3 } }\n')


def make_solver(workdir: Path, batch: int, prefix: str, dropout: bool = False, **kw) -> pb.SolverParameter:
    net = workdir / f"net_b{batch}{'_drop' if dropout else ''}.prototxt"
    text = NET.replace("@TRAIN@", str(workdir / "train_lmdb")).replace("@TEST@", str(workdir / "test_lmdb"))
    if dropout:
        text = text.replace('layer { name: "ip1"', DROPOUT + 'layer { name: "ip1"')
    net.write_text(text.replace("@B@", str(batch)))
    sp = pb.SolverParameter(net=str(net), base_lr=0.05, lr_policy="inv", gamma=1e-3, power=0.75,
                            momentum=0.9, weight_decay=5e-4, max_iter=ITERS, display=2,
                            test_interval=3, test_iter=[1], snapshot=SNAP, random_seed=3,
                            solver_mode=pb.SolverParameter.CPU, snapshot_prefix=str(workdir / prefix))
    for k, v in kw.items():
        setattr(sp, k, v)
    return sp


def write_solver(workdir: Path, sp: pb.SolverParameter, name: str) -> str:
    path = workdir / name
    ncio.write_text_proto(str(path), sp)
    return str(path)


def model_blobs(path) -> dict[str, np.ndarray]:
    m = ncio.read_caffemodel(str(path))
    return {f"{l.name}[{i}]": ncio.blob_to_array(b) for l in m.layer for i, b in enumerate(l.blobs)}


def assert_same_training(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        if "mask" in k or k.endswith(("[2]", "[3]")):
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"mask {k}")
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.fixture(scope="module")
def one_process(workdir):
    """The reference: 1 process x batch 2B."""
    s = Solver(make_solver(workdir, 2 * B, "one"), verbose=False)
    s.solve()
    return s


@pytest.fixture(scope="module")
def two_processes(workdir):
    """2 gloo processes x batch B; each rank dumps its blobs after training."""
    out = workdir / "dump"
    out.mkdir()
    sp = make_solver(workdir, B, "two")
    launch(dist_workers.train_and_dump, 2, (sp.SerializeToString(), str(out)))
    return out


def test_two_processes_train_like_one_process_with_double_batch(workdir, one_process, two_processes):
    ranks = [dict(np.load(two_processes / f"rank{r}.npz")) for r in range(2)]
    # Every rank ends with the same blobs, masks included, bit for bit.
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=f"rank 1's {k}")
    # DNS pruned and INQ quantized for real, more than once for DNS.
    surg = np.load(two_processes / "surgeries0.npy")
    assert surg.max() > 1
    assert 0 < ranks[0]["conv1.weight_mask"].sum() < ranks[0]["conv1.weight_mask"].size
    assert 0 < ranks[0]["ip1.weight_mask"].sum() < ranks[0]["ip1.weight_mask"].size
    # ... and the same as one process with twice the batch.
    want = dist_workers.blobs_of(one_process.net)
    assert_same_training({k: ranks[0][k] for k in want}, want)
    # Only rank 0 wrote snapshots, and they hold those blobs.
    for it in (SNAP, ITERS):
        assert (workdir / f"two_iter_{it}.caffemodel").is_file()
        assert (workdir / f"two_iter_{it}.solverstate.nc.npz").is_file()
    assert_same_training(model_blobs(workdir / f"two_iter_{ITERS}.caffemodel"),
                         model_blobs(workdir / f"one_iter_{ITERS}.caffemodel"))


def test_two_process_snapshot_resumes_on_one_process(workdir, one_process, two_processes, caplog):
    sp = make_solver(workdir, 2 * B, "resumed1")
    s = Solver(sp, verbose=False)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s.solve(resume_file=str(workdir / f"two_iter_{SNAP}.solverstate"))
    assert s.iter == ITERS
    # batches_consumed 3 x batch 4 x 2 processes = 24 records = 3 batches of 8: exact.
    assert "continuing at record 24 of the stream (batch 3)" in caplog.text
    assert_same_training(model_blobs(workdir / f"resumed1_iter_{ITERS}.caffemodel"),
                         model_blobs(workdir / f"one_iter_{ITERS}.caffemodel"))


def test_cli_cpu_procs_resume_is_bit_identical(workdir):
    # A 2-process snapshot resumed on 2 processes continues bit for bit, Dropout included (each
    # rank gets its own generator states back from the snapshot).
    full = write_solver(workdir, make_solver(workdir, B, "drop_full", dropout=True), "drop_full.prototxt")
    assert cli_main(["train", "--solver", full, "--cpu-procs", "2"]) == 0
    again = write_solver(workdir, make_solver(workdir, B, "drop_again", dropout=True), "drop_again.prototxt")
    assert cli_main(["train", "--solver", again, "--cpu-procs", "2",
                     "--snapshot", str(workdir / f"drop_full_iter_{SNAP}.solverstate")]) == 0
    a = (workdir / f"drop_full_iter_{ITERS}.caffemodel").read_bytes()
    b = (workdir / f"drop_again_iter_{ITERS}.caffemodel").read_bytes()
    assert a == b


def test_one_process_snapshot_resumes_on_two_processes(workdir, one_process, two_processes):
    sp = make_solver(workdir, B, "resumed3")
    solver = write_solver(workdir, sp, "resumed3_solver.prototxt")
    rc = cli_main(["train", "--solver", solver, "--cpu-procs", "2",
                   "--snapshot", str(workdir / f"one_iter_{SNAP}.solverstate")])
    assert rc == 0
    assert_same_training(model_blobs(workdir / f"resumed3_iter_{ITERS}.caffemodel"),
                         model_blobs(workdir / f"one_iter_{ITERS}.caffemodel"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_style(workdir, args: list[str]) -> list[subprocess.CompletedProcess]:
    """`python -m netcompress ARGS` on two processes given torchrun's variables (none left behind)."""
    port = _free_port()
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, "-m", "netcompress", *args], env=env,
                                      cwd=str(workdir), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outs)]


def test_torchrun_style_environment(workdir, two_processes):
    """Two `python -m netcompress train` processes given torchrun's variables train as one run."""
    sp = make_solver(workdir, B, "envrun", max_iter=SNAP)
    solver = write_solver(workdir, sp, "envrun_solver.prototxt")
    runs = _torchrun_style(workdir, ["train", "--solver", solver])
    outs = [r.stdout for r in runs]
    assert [r.returncode for r in runs] == [0, 0], "\n".join(outs)
    assert "Optimization Done." in outs[0]
    assert "Iteration 2, lr = " in outs[0] and "Iteration 2, lr = " not in outs[1]  # rank 0 logs
    assert (workdir / f"envrun_iter_{SNAP}.caffemodel").read_bytes() == \
        (workdir / f"two_iter_{SNAP}.caffemodel").read_bytes()


def test_torchrun_style_error_reaches_the_exit_code(workdir):
    """A rank's error under a launcher is its one error line and exit code (the command leaves
    without tearing its process group down)."""
    sp = make_solver(workdir, B, "enverr", max_iter=SNAP)
    solver = write_solver(workdir, sp, "enverr_solver.prototxt")
    missing = workdir / "no_such.caffemodel"
    runs = _torchrun_style(workdir, ["train", "--solver", solver, "--weights", str(missing)])
    for rank, r in enumerate(runs):
        assert r.returncode not in (0, None), r.stdout
        assert f"netcompress train: error: rank {rank}: " in r.stdout, r.stdout
        assert "no_such.caffemodel" in r.stdout


@pytest.mark.parametrize("fail", [False, True])
def test_spawned_ranks_leave_without_a_teardown(tmp_path, fail):
    """launch's ranks end by os._exit without destroy_process_group, which torch 2.4's gloo can hang in
    (distributed.run_in_process_group); their results and errors still reach the launcher."""
    if fail:
        with pytest.raises(WorkerError, match="rank 1: rank 1 fails on purpose"):
            launch(dist_workers.watch_teardown, 2, (str(tmp_path), True))
    else:
        launch(dist_workers.watch_teardown, 2, (str(tmp_path), False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done0", "done1"]  # no teardown file
    assert (tmp_path / "done0").read_text() == "6"


@pytest.mark.parametrize("mode", ["mask", "nan", "stop"])
def test_one_rank_going_astray(workdir, mode):
    prefix = f"fault_{mode}"
    sp = make_solver(workdir, B, f"{prefix}/run")
    (workdir / prefix).mkdir()
    args = (sp.SerializeToString(), mode, SNAP if mode == "mask" else 2)
    if mode == "stop":
        launch(dist_workers.inject_fault, 2, args)
        # Rank 1 alone asked; both stopped after iteration 2 and rank 0 snapshotted there.
        assert [(workdir / prefix / f"done{r}.txt").read_text() for r in range(2)] == ["2", "2"]
        assert (workdir / prefix / "run_iter_2.caffemodel").is_file()
        return
    with pytest.raises(WorkerError) as info:
        launch(dist_workers.inject_fault, 2, args)
    msg = str(info.value)
    if mode == "mask":
        assert "Iteration 3: the masks or layer statistics of the 2 processes differ" in msg
        assert "conv1.weight_mask (rank 1 differs from rank 0)" in msg
        assert not (workdir / prefix / "run_iter_3.caffemodel").exists()  # nothing written
    else:
        assert "Iteration 2, loss = nan: the loss is not finite on rank 1," in msg
    assert info.value.exit_code == 1


# ----------------------------------------------------------------------------------------------
# No processes needed
# ----------------------------------------------------------------------------------------------

def test_launcher_env_torchrun_and_slurm():
    assert launcher_env({}) is None
    assert launcher_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    e = launcher_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "n0",
                      "MASTER_PORT": "29500"})
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == \
        (3, 4, 1, "n0", 29500, "torchrun")
    with pytest.raises(NetcompressError, match="MASTER_ADDR, MASTER_PORT are not set"):
        launcher_env({"WORLD_SIZE": "2", "RANK": "0"})
    slurm = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
             "SLURM_STEP_NODELIST": "gpu[03-04,7]", "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "8"}
    e = launcher_env(slurm)
    assert (e.rank, e.world_size, e.local_rank, e.master_addr, e.master_port, e.source) == \
        (5, 8, 1, "gpu03", 12000 + 123456 % 20000, "slurm")
    e = launcher_env(dict(slurm, MASTER_ADDR="head", MASTER_PORT="1234"))
    assert (e.master_addr, e.master_port) == ("head", 1234)
    # A batch script outside srun has SLURM_NTASKS and SLURM_PROCID, but is one process.
    assert launcher_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}) is None
    with pytest.raises(NetcompressError, match="export MASTER_ADDR"):
        launcher_env({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"})


def test_first_host_of_a_slurm_node_list():
    assert first_host("node7") == "node7"
    assert first_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_host("a-b[10,2]") == "a-b10"
    assert first_host("rack[1-2]-n[07-08]") == "rack1-n07"
    assert first_host("x1,x2") == "x1"


def test_gradient_buckets_keep_order_and_split_by_dtype_and_size():
    ar = GradientAllReduce(2, bucket_bytes=64)
    a, b, c = torch.zeros(8), torch.zeros(8), torch.zeros(20)
    d = torch.zeros(2, dtype=torch.float64)
    buckets = ar.buckets([a, d, b, c])
    got = sorted([id(t) for t in bk] for bk in buckets)
    assert got == sorted([[id(a), id(b)], [id(c)], [id(d)]])


def test_cli_rejects_gpu_without_cuda_and_mixed_flags(workdir, capsys):
    sp = make_solver(workdir, B, "cli")
    solver = write_solver(workdir, sp, "cli_solver.prototxt")
    if not torch.cuda.is_available():
        assert cli_main(["train", "--solver", solver, "--gpu", "all"]) == 1
        assert "--gpu all: no CUDA device is available" in capsys.readouterr().err
        assert cli_main(["train", "--solver", solver, "--gpu", "0,1"]) == 1
        assert "--gpu 0,1: no CUDA device is available" in capsys.readouterr().err
    assert cli_main(["train", "--solver", solver, "--gpu", "0", "--cpu-procs", "2"]) == 1
    assert "--cpu-procs and --gpu exclude each other" in capsys.readouterr().err
    many = 4 * (os.cpu_count() or 1) + 1  # (100,000 ran for minutes, then died in gloo)
    assert cli_main(["train", "--solver", solver, "--cpu-procs", str(many)]) == 1
    assert f"--cpu-procs {many} is more processes than this machine's" in capsys.readouterr().err
    for bad in ("-5", "nan", "0"):  # (torch's DistNetworkError, a ValueError; 0 was the default)
        assert cli_main(["train", "--solver", solver, "--cpu-procs", "2", "--dist-timeout", bad]) == 1
        assert f"--dist-timeout takes a positive number of seconds, got {bad}" in capsys.readouterr().err


def test_data_position_converts_between_world_sizes(tmp_path, caplog):
    from google.protobuf import text_format

    from netcompress.layers import LayerContext, create_layer

    imgs = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1)
    write_datum_lmdb(tmp_path / "db", imgs, np.arange(30))

    def layer(batch, rank=0, world=1):
        p = text_format.Parse(f'name: "d" type: "Data" top: "data" top: "label" phase: TRAIN '
                              f'data_param {{ source: "{tmp_path / "db"}" batch_size: {batch} '
                              f'backend: LMDB prefetch: 0 }}', pb.LayerParameter())
        return create_layer(p, [], LayerContext(phase=pb.TRAIN, seed=1, rank=rank, world_size=world))

    saved = {"batches_consumed": 2, "seed": 1, "batch_size": 3, "world_size": 2, "rank": 0}
    one = layer(6)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        one.set_extra_state(saved)  # 2 x 3 x 2 = 12 records = 2 batches of 6
    assert one.batches_consumed == 2 and "continuing at record 12" in caplog.text
    assert one()[1].tolist() == list(range(12, 18))
    caplog.clear()
    odd = layer(5)
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        odd.set_extra_state(saved)  # 12 records are not a whole number of batches of 5
    assert odd.batches_consumed == 2 and "reads the last 2 records again" in caplog.text
    # ... and from one process back to two: each rank continues in the same global stream.
    ranks = [layer(3, r, 2) for r in range(2)]
    for l in ranks:
        l.set_extra_state({"batches_consumed": 2, "seed": 1, "batch_size": 6, "world_size": 1})
    got = sorted(v for l in ranks for v in l()[1].tolist())
    assert got == list(range(12, 18))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/maps"),
                    reason="the malloc settings are glibc's (Linux)")
def test_spawned_ranks_keep_freed_memory_as_the_commands_do(tmp_path, monkeypatch):
    """A spawned rank is a fresh process: it applies the commands' malloc settings itself
    (netcompress/memory.py), and NETCOMPRESS_MALLOC=system reaches it through the environment."""
    from netcompress import memory

    if not memory._is_glibc():
        pytest.skip("the malloc settings are glibc's")
    monkeypatch.delenv("NETCOMPRESS_MALLOC", raising=False)
    launch(dist_workers.report_malloc, 2, (str(tmp_path),))
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["True True"] * 2
    monkeypatch.setenv("NETCOMPRESS_MALLOC", "system")
    launch(dist_workers.report_malloc, 1, (str(tmp_path),))
    assert (tmp_path / "rank0.txt").read_text() == "False False"


def test_spawned_ranks_take_the_chosen_threads_or_share_the_cpus(tmp_path, monkeypatch):
    """A spawned rank is a fresh process: it took torch's default, every CPU, whatever --threads said (two ranks
    on two CPUs ran four threads). Now --threads (or its variables) is each rank's count, and by default the
    ranks share the CPUs out."""
    from netcompress import threads

    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads, "_current", [threads.choose_threads(environ={}, default=4)])
    launch(dist_workers.report_threads, 2, (str(tmp_path),))
    assert [(tmp_path / f"threads{r}.txt").read_text() for r in range(2)] == ["2", "2"]
    monkeypatch.setattr(threads, "_current", [threads.choose_threads(1, environ={})])
    launch(dist_workers.report_threads, 2, (str(tmp_path),))
    assert [(tmp_path / f"threads{r}.txt").read_text() for r in range(2)] == ["1", "1"]
    monkeypatch.setattr(threads, "usable_cpus", lambda: 3)
    assert threads.threads_per_process(2, threads.choose_threads(environ={}, default=3)) == 1
    assert threads.threads_per_process(5, threads.choose_threads(environ={}, default=3)) == 1
    assert threads.threads_per_process(2, threads.choose_threads(environ={"NETCOMPRESS_THREADS": "3"})) == 3
    assert threads.threads_per_process(2, threads.choose_threads(environ={}, default=1)) == 1  # (set_num_threads(1))
    assert threads.threads_per_process(1, threads.choose_threads(environ={}, default=2)) == 2
