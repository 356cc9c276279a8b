"""ActQuant in data-parallel training: every rank calibrates on its own share of the first batch, and the
all-reduce in the calibration gives all of them the α of the whole global batch (the source's single process
calibrated on all of it), so the ranks stay identical and the snapshot check passes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from netcompress.distributed import data_parallel_solver, launch
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

NET = """
name: "aq"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "@TRAIN@" batch_size: @B@ backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "act" type: "ActQuant" bottom: "ip1" top: "q" act_quant_param { bitwidth: 4 } }
layer { name: "ip2" type: "QuantInnerProduct" bottom: "q" top: "ip2"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } weight_quant_param { bitwidth: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from netcompress.data.db import LmdbWriter

    root = tmp_path_factory.mktemp("actquant_dp")
    rs = np.random.RandomState(2)
    labels = rs.randint(0, 4, 32)
    imgs = (rs.rand(32, 1, 6, 6) * 255).astype(np.uint8)
    with LmdbWriter(str(root / "train_lmdb")) as db:
        for i in range(32):
            d = pb.Datum(channels=1, height=6, width=6, data=imgs[i].tobytes(), label=int(labels[i]))
            db.put(b"%08d" % i, d.SerializeToString())
    return root


def make_solver(workdir: Path, batch: int, prefix: str) -> pb.SolverParameter:
    net = workdir / f"net_b{batch}.prototxt"
    net.write_text(NET.replace("@TRAIN@", str(workdir / "train_lmdb")).replace("@B@", str(batch)))
    return pb.SolverParameter(net=str(net), base_lr=0.1, lr_policy="fixed", momentum=0.9, max_iter=3,
                              snapshot=3, random_seed=5, solver_mode=pb.SolverParameter.CPU,
                              snapshot_prefix=str(workdir / prefix))


def _worker(info, solver_bytes: bytes, outdir: str) -> None:
    solver = data_parallel_solver(pb.SolverParameter.FromString(solver_bytes), device=info.device, verbose=False)
    solver.solve()  # the snapshot at iteration 3 runs the cross-rank consistency check
    act = solver.net.layer("act")
    np.savez(os.path.join(outdir, f"rank{info.rank}.npz"), alpha=act.alpha.numpy(), calib_min=act.calib_min.numpy())


def test_two_ranks_calibrate_on_the_global_batch(workdir):
    one = Solver(make_solver(workdir, 8, "one"), verbose=False)
    one.solve()
    alpha_one = one.net.layer("act").alpha.numpy()
    assert alpha_one[0] > 0
    assert set(one.net.layer("act").replicated_state()) == {"alpha", "calib_min"}
    out = workdir / "dump"
    out.mkdir()
    launch(_worker, 2, (make_solver(workdir, 4, "two").SerializeToString(), str(out)))
    r0, r1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    np.testing.assert_array_equal(r0["alpha"], r1["alpha"])
    np.testing.assert_array_equal(r0["calib_min"], r1["calib_min"])
    # ranks 0 and 1 read records 0, 2, 4, 6 and 1, 3, 5, 7: together the single process's first batch
    np.testing.assert_array_equal(r0["alpha"], alpha_one)
    assert (workdir / "two_iter_3.caffemodel").is_file()
