"""Caffe's random stream: random_seed gives Caffe's own initial weights."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from netcompress.cli import main as cli_main
from netcompress.fillers import fill
from netcompress.proto import caffe_pb2 as pb
from netcompress.layers import layer_class
from netcompress.rng import CaffeRNG


def test_engine_is_boost_mt19937():
    # mt19937 seeded with 1: the first outputs of the reference generator (std::mt19937(1) too)
    assert CaffeRNG(1).rand_u32(3).tolist() == [1791095845, 4282876139, 3093770124]
    # std::mt19937 default seed 5489: its 10000th output is 4123659995 (C++11 standard)
    r = CaffeRNG(5489)
    r.skip(9999)
    assert r.rand_u32() == 4123659995


def test_uniform_follows_boost_uniform_real_float():
    r, ref = CaffeRNG(7), CaffeRNG(7)
    got = r.uniform(1000, -0.5, 0.25)
    b = np.nextafter(np.float32(0.25), np.float32(1))
    expect = ref.rand_u32(1000).astype(np.float32) / np.float32(2 ** 32) * (b - np.float32(-0.5)) + np.float32(-0.5)
    np.testing.assert_array_equal(got, expect)
    assert got.dtype == np.float32 and got.min() >= -0.5 and got.max() <= 0.25


def test_xavier_fill_draws_in_caffe_order():
    t = torch.empty(4, 3, 2, 2)
    f = pb.FillerParameter(type="xavier")
    fill(t, f, CaffeRNG(3))
    scale = np.sqrt(np.float32(3) / np.float32(12))
    np.testing.assert_array_equal(t.numpy().ravel(), CaffeRNG(3).uniform(48, -scale, scale))


def setup_draws(lp: pb.LayerParameter, phase: int) -> int:
    return layer_class(lp.type).setup_draws(lp, phase)


@pytest.mark.parametrize("kind", ["xavier", "msra"])
def test_an_empty_blob_draws_nothing(kind):
    # A blob with no elements (an InnerProduct over a 0-wide input) has a fan of 0: nothing to draw, as in Caffe
    # (the infinite scale was refused by the uniform draw: "need finite a <= b")
    rng = CaffeRNG(7)
    t = fill(torch.empty(3, 0), pb.FillerParameter(type=kind), rng)
    assert t.shape == (3, 0)
    assert rng.uniform(2, 0.0, 1.0).tolist() == CaffeRNG(7).uniform(2, 0.0, 1.0).tolist()  # the stream unmoved


def test_setup_draws_of_data_layers():
    lp = pb.LayerParameter(type="Data")
    assert setup_draws(lp, pb.TRAIN) == 1  # the prefetch thread's seed
    lp.transform_param.crop_size = 10
    assert setup_draws(lp, pb.TRAIN) == 2 and setup_draws(lp, pb.TEST) == 1
    lp.transform_param.mirror = True
    assert setup_draws(lp, pb.TEST) == 2
    im = pb.LayerParameter(type="ImageData")
    im.image_data_param.shuffle = True
    im.image_data_param.rand_skip = 5
    assert setup_draws(im, pb.TEST) == 3
    assert setup_draws(pb.LayerParameter(type="Convolution"), pb.TRAIN) == 0
    memory = pb.LayerParameter(type="MemoryData")
    assert setup_draws(memory, pb.TRAIN) == 0  # no prefetch thread
    memory.transform_param.mirror = True
    assert setup_draws(memory, pb.TRAIN) == 1


def test_seeded_lenet_starts_from_caffes_weights(in_fixture_workdir, capsys):
    """With Caffe's solver (random_seed: 1) the iteration-0 test and loss equal Caffe's log."""
    import os
    os.makedirs("a_lenet", exist_ok=True)
    with open("lenet/lenet_solver.prototxt") as f:
        text = f.read().replace("max_iter: 5000", "max_iter: 1")
    with open("a_lenet/lenet_train_test.prototxt", "w") as f:
        f.write(open("lenet/lenet_train_test.prototxt").read())
    with open("a_lenet/solver1.prototxt", "w") as f:
        f.write(text)
    assert cli_main(["train", "--solver", "a_lenet/solver1.prototxt"]) == 0
    err = capsys.readouterr().err
    # train_lenet.log: accuracy = 0.099, loss = 2.35697 at iteration 0; training loss = 2.27565
    first_test = err[err.index("Iteration 0, Testing net (#0)"):err.index("Iteration 0 (")]
    assert re.search(r"Test net output #0: accuracy = 0\.099\n", first_test)
    assert re.search(r"Test net output #1: loss = 2\.35697 ", first_test)
    assert re.search(r"\] Iteration 0 \(.*\), loss = 2\.27565\n", err)
