"""A masked layer type defined here, in a test file, and registered, with no other change to
netcompress: it trains, snapshots, resumes bit-identically and trains on 2 gloo processes.

`RandomMaskedInnerProduct` redraws its weight mask before every TRAIN forward from a generator it
owns (the net's named generator "test_random_mask"), so it exercises the seams a recipe uses: the
masked layer base (blobs, masked forward with splicing gradient), recipe-owned generator state in
snapshots, and its broadcast and consistency check in distributed runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from netcompress import io as ncio
from netcompress.distributed import data_parallel_solver, launch
from netcompress.layers import register_layer
from netcompress.layers.base import registered_class
from netcompress.layers.masked import MaskedLayer
from netcompress.layers.vision import InnerProduct
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver
from netcompress.solvers.callbacks import TrainingCallback

GENERATOR = "test_random_mask"


class RandomMaskedInnerProduct(MaskedLayer, InnerProduct):
    """InnerProduct whose weight mask keeps a fresh random 3/4 of the weights at every TRAIN forward."""

    param_field = "dns_inner_product_param"  # where the mask fillers are read

    def __init__(self, param, bottom_shapes, ctx):
        InnerProduct.__init__(self, param, bottom_shapes, ctx)
        self._add_masks()
        if self.phase == pb.TRAIN:
            ctx.named_generator(GENERATOR)

    def before_train_forward(self) -> None:
        keep = torch.rand(self.weight_mask.shape, generator=self.ctx.named_generator(GENERATOR)) < 0.75
        with torch.no_grad():
            self.weight_mask.copy_(keep.to(self.weight_mask.dtype))


if registered_class("RandomMaskedInnerProduct") is None:  # spawned workers import this module again
    register_layer("RandomMaskedInnerProduct")(RandomMaskedInnerProduct)

NET = """
name: "plugin"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "@TRAIN@" batch_size: @B@ backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } data_param { source: "@TEST@" batch_size: 10 backend: LMDB } }
layer { name: "ip1" type: "RandomMaskedInnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }
        dns_inner_product_param { weight_mask_filler { type: "constant" value: 1 }
                                  bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, band_digits):
    from netcompress.data.db import LmdbWriter

    root = tmp_path_factory.mktemp("plugin")
    imgs, labels = band_digits(56, 6, step=1, width=1, seed=1)
    for name, sl in (("train_lmdb", slice(0, 48)), ("test_lmdb", slice(48, 56))):
        with LmdbWriter(str(root / name)) as db:
            for i in range(sl.start, sl.stop):
                d = pb.Datum(channels=1, height=6, width=6, data=imgs[i].tobytes(), label=int(labels[i]))
                db.put(b"%08d" % i, d.SerializeToString())
    return root


def make_solver(workdir: Path, batch: int, prefix: str, max_iter: int = 6) -> pb.SolverParameter:
    net = workdir / f"net_b{batch}.prototxt"
    net.write_text(NET.replace("@TRAIN@", str(workdir / "train_lmdb")).replace("@TEST@", str(workdir / "test_lmdb"))
                   .replace("@B@", str(batch)))
    return pb.SolverParameter(net=str(net), base_lr=0.1, lr_policy="fixed", momentum=0.9, weight_decay=1e-3,
                              max_iter=max_iter, display=0, test_interval=3, test_iter=[1], snapshot=3,
                              random_seed=5, solver_mode=pb.SolverParameter.CPU,
                              snapshot_prefix=str(workdir / prefix))


def model_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_plugin_layer_trains_and_resumes_bit_identically(workdir):
    full = Solver(make_solver(workdir, 8, "full"), verbose=False)
    w0 = full.net.layer("ip1").weight.detach().clone()
    masks = []
    full.add_callback(_Record(masks))
    full.solve()
    ip1 = full.net.layer("ip1")
    assert not torch.equal(ip1.weight.detach(), w0)  # it trained
    assert len({m.tobytes() for m in masks}) == len(masks) == 6  # a new mask every iteration
    assert all(0.6 < m.mean() < 0.9 for m in masks)
    # the named generator is in the snapshot state, so a resume draws the masks again
    resumed = Solver(make_solver(workdir, 8, "resumed"), verbose=False)
    resumed.solve(resume_file=str(workdir / "full_iter_3.solverstate"))
    assert model_bytes(str(workdir / "resumed_iter_6.caffemodel")) == model_bytes(str(workdir / "full_iter_6.caffemodel"))


class _Record(TrainingCallback):
    """Records ip1's mask after each iteration."""

    def __init__(self, out):
        self.out = out

    def after_iteration(self, solver) -> None:
        self.out.append(solver.net.layer("ip1").weight_mask.detach().numpy().copy())


def _train_worker(info, solver_bytes: bytes, outdir: str) -> None:
    sp = pb.SolverParameter.FromString(solver_bytes)
    solver = data_parallel_solver(sp, device=info.device, verbose=False)
    solver.solve()
    layer = solver.net.layer("ip1")
    np.savez(os.path.join(outdir, f"rank{info.rank}.npz"), mask=layer.weight_mask.numpy(),
             weight=layer.weight.detach().numpy())


def test_plugin_layer_trains_on_two_gloo_processes(workdir):
    one = Solver(make_solver(workdir, 8, "one"), verbose=False)
    one.solve()
    out = workdir / "dump"
    out.mkdir()
    launch(_train_worker, 2, (make_solver(workdir, 4, "two").SerializeToString(), str(out)))
    r0, r1 = np.load(out / "rank0.npz"), np.load(out / "rank1.npz")
    # Every rank drew the same masks (rank 0's generator state), and 2 x 4 trains like 1 x 8.
    np.testing.assert_array_equal(r0["mask"], r1["mask"])
    np.testing.assert_array_equal(r0["weight"], r1["weight"])
    np.testing.assert_array_equal(r0["mask"], one.net.layer("ip1").weight_mask.numpy())
    np.testing.assert_allclose(r0["weight"], one.net.layer("ip1").weight.detach().numpy(), rtol=1e-5, atol=1e-7)
    two = ncio.read_caffemodel(str(workdir / "two_iter_6.caffemodel"))
    assert [len(l.blobs) for l in two.layer if l.name == "ip1"] == [4]  # [W, b, W_mask, b_mask]
