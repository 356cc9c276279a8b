"""The example nets in examples/: top shapes, parameter counts and a forward pass.

The expected shapes are the ones Caffe prints ("Top shape: ...") for these nets, worked out from
the published architectures with Caffe's output-size rules: convolution floors
(`(H + 2p - k) / s + 1`), pooling *ceils* (`ceil((H + 2p - k) / s) + 1`). Where ceil and floor
differ the comment says so; those blobs catch a Pooling layer that rounds like PyTorch's default.
Parameter counts are Caffe's: every blob of every layer, BatchNorm statistics included; the
learnable part (the nn.Parameters) is checked separately.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch

from netcompress import io as ncio
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# name -> (prototxt, {blob: top shape}, total blob count, learnable count)
DEPLOY = {
    "lenet": ("mnist/lenet.prototxt", {
        "data": (64, 1, 28, 28),
        "conv1": (64, 20, 24, 24),
        "pool1": (64, 20, 12, 12),
        "conv2": (64, 50, 8, 8),
        "pool2": (64, 50, 4, 4),
        "ip1": (64, 500),
        "ip2": (64, 10),
        "prob": (64, 10),
    }, 431_080, 431_080),
    "cifar10_quick": ("cifar10/cifar10_quick.prototxt", {
        "data": (1, 3, 32, 32),
        "conv1": (1, 32, 32, 32),
        "pool1": (1, 32, 16, 16),  # ceil(29/2)+1; floor would give 15
        "conv2": (1, 32, 16, 16),
        "pool2": (1, 32, 8, 8),    # ceil(13/2)+1; floor: 7
        "conv3": (1, 64, 8, 8),
        "pool3": (1, 64, 4, 4),    # ceil(5/2)+1; floor: 3
        "ip1": (1, 64),
        "ip2": (1, 10),
        "prob": (1, 10),
    }, 145_578, 145_578),
    "cifar10_full": ("cifar10/cifar10_full.prototxt", {
        "data": (1, 3, 32, 32),
        "conv1": (1, 32, 32, 32),
        "pool1": (1, 32, 16, 16),
        "norm1": (1, 32, 16, 16),
        "conv2": (1, 32, 16, 16),
        "pool2": (1, 32, 8, 8),
        "norm2": (1, 32, 8, 8),
        "conv3": (1, 64, 8, 8),
        "pool3": (1, 64, 4, 4),
        "ip1": (1, 10),
        "prob": (1, 10),
    }, 89_578, 89_578),
    "caffenet": ("imagenet/caffenet_deploy.prototxt", {
        "data": (10, 3, 227, 227),
        "conv1": (10, 96, 55, 55),
        "pool1": (10, 96, 27, 27),
        "norm1": (10, 96, 27, 27),
        "conv2": (10, 256, 27, 27),
        "pool2": (10, 256, 13, 13),
        "norm2": (10, 256, 13, 13),
        "conv3": (10, 384, 13, 13),
        "conv4": (10, 384, 13, 13),
        "conv5": (10, 256, 13, 13),
        "pool5": (10, 256, 6, 6),
        "fc6": (10, 4096),
        "fc7": (10, 4096),
        "fc8": (10, 1000),
        "prob": (10, 1000),
    }, 60_965_224, 60_965_224),
    "alexnet": ("imagenet/alexnet_deploy.prototxt", {
        "data": (10, 3, 227, 227),
        "conv1": (10, 96, 55, 55),
        "norm1": (10, 96, 55, 55),  # AlexNet normalizes before pooling
        "pool1": (10, 96, 27, 27),
        "conv2": (10, 256, 27, 27),
        "norm2": (10, 256, 27, 27),
        "pool2": (10, 256, 13, 13),
        "conv3": (10, 384, 13, 13),
        "conv4": (10, 384, 13, 13),
        "conv5": (10, 256, 13, 13),
        "pool5": (10, 256, 6, 6),
        "fc6": (10, 4096),
        "fc7": (10, 4096),
        "fc8": (10, 1000),
        "prob": (10, 1000),
    }, 60_965_224, 60_965_224),
    "vgg16": ("imagenet/vgg16_deploy.prototxt", {
        "data": (10, 3, 224, 224),
        "conv1_2": (10, 64, 224, 224),
        "pool1": (10, 64, 112, 112),
        "conv2_2": (10, 128, 112, 112),
        "pool2": (10, 128, 56, 56),
        "conv3_3": (10, 256, 56, 56),
        "pool3": (10, 256, 28, 28),
        "conv4_3": (10, 512, 28, 28),
        "pool4": (10, 512, 14, 14),
        "conv5_3": (10, 512, 14, 14),
        "pool5": (10, 512, 7, 7),
        "fc6": (10, 4096),
        "fc7": (10, 4096),
        "fc8": (10, 1000),
        "prob": (10, 1000),
    }, 138_357_544, 138_357_544),
    "googlenet": ("imagenet/googlenet_deploy.prototxt", {
        "data": (10, 3, 224, 224),
        "conv1/7x7_s2": (10, 64, 112, 112),
        "pool1/3x3_s2": (10, 64, 56, 56),    # ceil(109/2)+1; floor: 55
        "pool1/norm1": (10, 64, 56, 56),
        "conv2/3x3_reduce": (10, 64, 56, 56),
        "conv2/3x3": (10, 192, 56, 56),
        "conv2/norm2": (10, 192, 56, 56),
        "pool2/3x3_s2": (10, 192, 28, 28),   # ceil(53/2)+1; floor: 27
        "inception_3a/pool": (10, 192, 28, 28),
        "inception_3a/output": (10, 256, 28, 28),
        "inception_3b/output": (10, 480, 28, 28),
        "pool3/3x3_s2": (10, 480, 14, 14),
        "inception_4a/output": (10, 512, 14, 14),
        "inception_4b/output": (10, 512, 14, 14),
        "inception_4c/output": (10, 512, 14, 14),
        "inception_4d/output": (10, 528, 14, 14),
        "inception_4e/output": (10, 832, 14, 14),
        "pool4/3x3_s2": (10, 832, 7, 7),
        "inception_5a/output": (10, 832, 7, 7),
        "inception_5b/output": (10, 1024, 7, 7),
        "pool5/7x7_s1": (10, 1024, 1, 1),
        "loss3/classifier": (10, 1000),
        "prob": (10, 1000),
    }, 6_998_552, 6_998_552),
    # Kaiming He's layout: bias-free convolutions, BatchNorm (mean, variance, scale factor:
    # 2C+1 statistics, not learnable) and Scale (gamma, beta: 2C learnable) after each. The 53 BN
    # layers hold 53,173 statistics; the learnable count equals torchvision's resnet50.
    "resnet50": ("imagenet/resnet50_deploy.prototxt", {
        "data": (10, 3, 224, 224),
        "conv1": (10, 64, 112, 112),
        "pool1": (10, 64, 56, 56),           # ceil(109/2)+1; floor: 55
        "res2a_branch1": (10, 256, 56, 56),
        "res2a_branch2a": (10, 64, 56, 56),
        "res2a_branch2b": (10, 64, 56, 56),
        "res2a": (10, 256, 56, 56),
        "res2c": (10, 256, 56, 56),
        "res3a_branch1": (10, 512, 28, 28),
        "res3a_branch2a": (10, 128, 28, 28),
        "res3a": (10, 512, 28, 28),
        "res3d": (10, 512, 28, 28),
        "res4a": (10, 1024, 14, 14),
        "res4f": (10, 1024, 14, 14),
        "res5a": (10, 2048, 7, 7),
        "res5c": (10, 2048, 7, 7),
        "pool5": (10, 2048, 1, 1),
        "fc1000": (10, 1000),
        "prob": (10, 1000),
    }, 25_610_205, 25_557_032),
    # DeepScale's v1.1 deploy reads 227x227 crops: 113 after conv1, then 56/28/14 after the
    # three ceil-rounded pools (a 224 input, as in torchvision, gives 55/27/13 instead).
    "squeezenet1.1": ("imagenet/squeezenet1.1_deploy.prototxt", {
        "data": (10, 3, 227, 227),
        "conv1": (10, 64, 113, 113),
        "pool1": (10, 64, 56, 56),
        "fire2/squeeze1x1": (10, 16, 56, 56),
        "fire2/expand1x1": (10, 64, 56, 56),
        "fire2/expand3x3": (10, 64, 56, 56),
        "fire2/concat": (10, 128, 56, 56),
        "fire3/concat": (10, 128, 56, 56),
        "pool3": (10, 128, 28, 28),          # ceil(53/2)+1; floor: 27
        "fire4/concat": (10, 256, 28, 28),
        "fire5/concat": (10, 256, 28, 28),
        "pool5": (10, 256, 14, 14),          # ceil(25/2)+1; floor: 13
        "fire6/concat": (10, 384, 14, 14),
        "fire7/concat": (10, 384, 14, 14),
        "fire8/concat": (10, 512, 14, 14),
        "fire9/concat": (10, 512, 14, 14),
        "conv10": (10, 1000, 14, 14),
        "pool10": (10, 1000, 1, 1),
        "prob": (10, 1000, 1, 1),
    }, 1_235_496, 1_235_496),
}


def _net_param(rel: str, batch: int | None = None) -> pb.NetParameter:
    """The example's NetParameter, with the Input batch replaced by `batch` if given."""
    param = ncio.read_net(str(EXAMPLES / rel))
    if batch is not None:
        for layer in param.layer:
            if layer.type == "Input":
                for shape in layer.input_param.shape:
                    shape.dim[0] = batch
    return param


def _randomize(net: Net, seed: int = 0) -> None:
    """Give a deploy net (whose prototxt has no fillers) weights that keep activations finite.

    Weights are He-normal, biases zero; BatchNorm gets mean 0, variance 1, scale factor 1 and
    Scale gamma 1, beta 0, so each BN/Scale pair is the identity (blobs in Caffe's order).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in net.named_layers():
            blobs = layer.blobs()
            if layer.type_name in ("Convolution", "InnerProduct"):
                w = blobs[0]
                fan_in = w.numel() // w.shape[0]
                w.copy_(torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                for b in blobs[1:]:
                    b.zero_()
            elif layer.type_name == "BatchNorm":
                blobs[0].zero_()
                blobs[1].fill_(1.0)
                blobs[2].fill_(1.0)
            elif layer.type_name == "Scale":
                blobs[0].fill_(1.0)
                for b in blobs[1:]:
                    b.zero_()


@pytest.mark.parametrize("name", list(DEPLOY))
def test_deploy_net_shapes_and_param_count(name: str) -> None:
    rel, shapes, total, learnable = DEPLOY[name]
    net = Net(str(EXAMPLES / rel), phase="test", verbose=False)
    assert net.input_names == ["data"]
    assert net.output_names == ["prob"]
    got = {blob: tuple(net.blob_shapes[blob]) for blob in shapes}
    assert got == shapes
    assert sum(t.numel() for blobs in net.params.values() for t in blobs) == total
    assert sum(e.tensor.numel() for e in net.learnable_params() if e.learnable) == learnable


@pytest.mark.parametrize("name", list(DEPLOY))
def test_deploy_net_forward_batch1(name: str) -> None:
    rel, shapes, _, _ = DEPLOY[name]
    net = Net(_net_param(rel, batch=1), phase="test", verbose=False)
    net.eval()
    _randomize(net)
    x = torch.randn((1,) + tuple(shapes["data"][1:]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = net(data=x)
    assert list(out) == ["prob"]
    prob = out["prob"]
    assert tuple(prob.shape) == (1,) + tuple(shapes["prob"][1:])
    assert torch.isfinite(prob).all()
    assert (prob >= 0).all()
    torch.testing.assert_close(prob.sum(dim=1), torch.ones_like(prob.sum(dim=1)), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------
# Nets with Data layers: run them from a working directory holding small LMDBs at the paths the
# prototxt names, as Caffe resolves relative sources against its working directory.
# ----------------------------------------------------------------------------------------------

def _write_lmdb(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Raw (unencoded) Datum records keyed %08d, as Caffe's convert_mnist_data/convert_imageset write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i, (img, label) in enumerate(zip(images, labels)):
            c, h, w = img.shape
            datum = pb.Datum(channels=c, height=h, width=w, data=img.astype(np.uint8).tobytes(),
                             label=int(label))
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


@pytest.fixture
def mnist_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", 150), ("test", 120)):
        x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n)
        _write_lmdb(tmp_path / "data" / f"mnist5k_{split}_lmdb", x, y)
        data[split] = (x, y)
    monkeypatch.chdir(tmp_path)
    return data


def test_lenet_train_test_test_phase(mnist_dir) -> None:
    x, y = mnist_dir["test"]
    net = Net(str(EXAMPLES / "mnist/lenet_train_test.prototxt"), phase="test", verbose=False)
    assert net.blob_shapes["data"] == (100, 1, 28, 28)
    assert net.blob_shapes["label"] == (100,)
    assert net.blob_shapes["conv1"] == (100, 20, 24, 24)
    assert net.blob_shapes["pool2"] == (100, 50, 4, 4)
    assert net.blob_shapes["ip2"] == (100, 10)
    assert net.blob_shapes["accuracy"] == ()
    assert net.blob_shapes["loss"] == ()
    assert net.output_names == ["accuracy", "loss"]
    assert sum(t.numel() for blobs in net.params.values() for t in blobs) == 431_080
    net.eval()
    with torch.no_grad():
        out = net()
    # The TEST net reads the LMDB in key order and scales by 1/256.
    expected = torch.from_numpy(x[:100].astype(np.float32)) * 0.00390625
    torch.testing.assert_close(net.blobs["data"], expected, atol=0, rtol=0)
    torch.testing.assert_close(net.blobs["label"].long(), torch.from_numpy(y[:100]).long(), atol=0, rtol=0)
    assert 0.0 <= float(out["accuracy"]) <= 1.0
    assert math.isfinite(float(out["loss"])) and float(out["loss"]) > 0


def test_lenet_train_test_train_phase(mnist_dir) -> None:
    x, _ = mnist_dir["train"]
    net = Net(str(EXAMPLES / "mnist/lenet_train_test.prototxt"), phase="train", seed=1, verbose=False)
    assert net.blob_shapes["data"] == (64, 1, 28, 28)
    assert net.blob_shapes["label"] == (64,)
    assert net.blob_shapes["ip1"] == (64, 500)
    assert "accuracy" not in net.blob_shapes
    assert net.output_names == ["loss"]
    assert net.loss_weights == {"loss": 1.0}
    net.train()
    out = net()
    assert set(out) == {"loss"}
    assert math.isfinite(out["loss"].item())
    net.loss.backward()
    assert net.layer("conv1").blobs()[0].grad is not None
    # Two batches: records 0-63, then 64-127 (Caffe's Data layer reads sequentially).
    first = net.blobs["data"].detach().clone()
    net()
    second = net.blobs["data"]
    torch.testing.assert_close(first, torch.from_numpy(x[:64].astype(np.float32)) / 256, atol=0, rtol=0)
    torch.testing.assert_close(second, torch.from_numpy(x[64:128].astype(np.float32)) / 256, atol=0, rtol=0)


def test_caffenet_train_val_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full train_val format: Data layers with crop, mirror and a mean file, both phases."""
    rng = np.random.default_rng(0)
    n, size, crop = 3, 256, 227
    for split in ("train", "val"):
        imgs = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
        _write_lmdb(tmp_path / "examples/imagenet" / f"ilsvrc12_{split}_lmdb", imgs, np.arange(n))
        if split == "val":
            val_imgs = imgs
    mean = rng.uniform(90, 130, size=(1, 3, size, size)).astype(np.float32)
    (tmp_path / "data/ilsvrc12").mkdir(parents=True)
    ncio.write_binaryproto_array(str(tmp_path / "data/ilsvrc12/imagenet_mean.binaryproto"), mean)
    monkeypatch.chdir(tmp_path)

    param = ncio.read_net(str(EXAMPLES / "imagenet/caffenet_train_val.prototxt"))
    data_layers = [l for l in param.layer if l.type == "Data"]
    assert [l.data_param.batch_size for l in data_layers] == [256, 50]
    assert [l.transform_param.mirror for l in data_layers] == [True, False]
    assert all(l.transform_param.crop_size == crop for l in data_layers)
    for l in data_layers:  # a small batch keeps the test fast
        l.data_param.batch_size = 2

    train = Net(param, phase="train", seed=1, verbose=False)
    assert train.blob_shapes["data"] == (2, 3, crop, crop)
    assert train.blob_shapes["pool5"] == (2, 256, 6, 6)
    assert train.blob_shapes["fc8"] == (2, 1000)
    assert train.output_names == ["loss"]
    assert sum(t.numel() for blobs in train.params.values() for t in blobs) == 60_965_224
    train.train()
    out = train()
    assert math.isfinite(out["loss"].item())

    test = Net(param, phase="test", verbose=False)
    assert test.output_names == ["accuracy", "loss"]
    test.eval()
    with torch.no_grad():
        out = test()
    # TEST: center crop of (image - mean image), no mirroring.
    off = (size - crop) // 2
    expected = (torch.from_numpy(val_imgs[:2].astype(np.float32)) - torch.from_numpy(mean))[
        :, :, off:off + crop, off:off + crop]
    torch.testing.assert_close(test.blobs["data"], expected, atol=1e-4, rtol=0)
    assert 0.0 <= float(out["accuracy"]) <= 1.0
