"""LRN, BatchNorm and MVN against Caffe's formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- LRN ------------------------------------------------------------------------------------------

def lrn_across_reference(x, size, alpha, beta, k):
    x = x.numpy()
    N, C, H, W = x.shape
    half = (size - 1) // 2
    y = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            lo, hi = max(0, c - half), min(C, c + half + 1)
            scale = k + alpha / size * (x[n, lo:hi] ** 2).sum(axis=0)
            y[n, c] = x[n, c] * scale ** -beta
    return torch.from_numpy(y)


def lrn_within_reference(x, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL: AVE pool of x^2 (pad (size-1)/2, divisor size^2), then
    (1 + alpha * avg)^-beta; k is not used."""
    x = x.numpy()
    N, C, H, W = x.shape
    half = (size - 1) // 2
    y = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    win = x[n, c, max(0, h - half):min(H, h + half + 1), max(0, w - half):min(W, w + half + 1)]
                    avg = (win ** 2).sum() / (size * size)
                    y[n, c, h, w] = x[n, c, h, w] * (1 + alpha * avg) ** -beta
    return torch.from_numpy(y)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1.0, 0.75, 1.0), (3, 0.01, 0.5, 2.0), (1, 0.3, 0.6, 1.5),
                                               (7, 1e-4, 0.75, 1.0)])
def test_lrn_across_channels(make_layer, size, alpha, beta, k):
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}',
                       (2, 6, 3, 4))
    x = rand(2, 6, 3, 4)
    torch.testing.assert_close(layer(x), lrn_across_reference(x, size, alpha, beta, k))
    assert gradcheck(layer, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("size", [9, 13, 2147483647])
def test_lrn_across_channels_wider_than_the_channels(make_layer, size):
    # A window past the channels on both sides (it padded 2^31 - 2 zero channels: terabytes)
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: {size} alpha: 3 beta: 0.75 }}', (2, 4, 3, 3))
    x = rand(2, 4, 3, 3)
    torch.testing.assert_close(layer(x), lrn_across_reference(x, size, 3.0, 0.75, 1.0))
    if size < 100:
        assert gradcheck(layer, (x.clone().requires_grad_(),))


@pytest.mark.parametrize("size,alpha,beta", [(3, 1.0, 0.75), (5, 2.0, 0.5)])
def test_lrn_within_channel(make_layer, size, alpha, beta):
    layer = make_layer(f'type: "LRN" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: 7 '
                       'norm_region: WITHIN_CHANNEL }', (2, 2, 5, 4))
    x = rand(2, 2, 5, 4)
    torch.testing.assert_close(layer(x), lrn_within_reference(x, size, alpha, beta))
    assert gradcheck(layer, (x[:1].clone().requires_grad_(),))


def test_lrn_defaults_and_errors(make_layer):
    layer = make_layer('type: "LRN"', (1, 3, 2, 2))
    assert (layer.size, layer.alpha, layer.beta, layer.k) == (5, 1.0, 0.75, 1.0)
    assert layer.region == pb.LRNParameter.ACROSS_CHANNELS
    with pytest.raises(NetDefinitionError, match="local_size must be odd, got 4"):
        make_layer('type: "LRN" lrn_param { local_size: 4 }', (1, 3, 2, 2))
    with pytest.raises(NetDefinitionError, match="4-D bottom"):
        make_layer('type: "LRN"', (3, 2, 2))


# --- BatchNorm ------------------------------------------------------------------------------------

def test_batchnorm_blobs(make_layer):
    layer = make_layer('type: "BatchNorm"', (2, 3, 4, 4))
    assert layer.blob_names == ["mean", "variance", "scale_factor"]
    assert [tuple(b.shape) for b in layer.blobs()] == [(3,), (3,), (1,)]
    assert all(not layer.blob_is_learnable(i) for i in range(3))
    assert all(torch.all(b == 0) for b in layer.blobs())
    assert not list(layer.parameters())


def test_batchnorm_train_batch_stats_and_moving_average(make_layer):
    layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 1e-3 }',
                       (4, 3, 2, 5), phase=pb.TRAIN)
    assert not layer.use_global_stats
    x1, x2 = rand(4, 3, 2, 5, seed=1) * 2 + 1, rand(4, 3, 2, 5, seed=2) - 3
    y1 = layer(x1)
    xn = x1.numpy()
    mean = xn.mean(axis=(0, 2, 3))
    var = ((xn - mean.reshape(1, 3, 1, 1)) ** 2).mean(axis=(0, 2, 3))  # biased
    ref = (xn - mean.reshape(1, 3, 1, 1)) / np.sqrt(var + 1e-3).reshape(1, 3, 1, 1)
    torch.testing.assert_close(y1, torch.from_numpy(ref))
    m = 4 * 2 * 5
    torch.testing.assert_close(layer.mean, torch.from_numpy(mean))
    torch.testing.assert_close(layer.variance, torch.from_numpy(var * m / (m - 1)))
    torch.testing.assert_close(layer.scale_factor, torch.tensor([1.0], dtype=torch.float64))
    layer(x2)
    xn2 = x2.numpy()
    mean2 = xn2.mean(axis=(0, 2, 3))
    var2 = ((xn2 - mean2.reshape(1, 3, 1, 1)) ** 2).mean(axis=(0, 2, 3))
    torch.testing.assert_close(layer.mean, torch.from_numpy(0.9 * mean + mean2))
    torch.testing.assert_close(layer.variance, torch.from_numpy(0.9 * var * m / (m - 1) + var2 * m / (m - 1)))
    torch.testing.assert_close(layer.scale_factor, torch.tensor([1.9], dtype=torch.float64))
    # shape inference does not touch the statistics
    before = [b.clone() for b in layer.blobs()]
    layer.top_shapes([(4, 3, 2, 5)])
    assert all(torch.equal(a, b) for a, b in zip(before, layer.blobs()))


def test_batchnorm_train_gradient(make_layer):
    layer = make_layer('type: "BatchNorm"', (3, 2, 4), phase=pb.TRAIN)
    x = rand(3, 2, 4).requires_grad_()
    assert gradcheck(layer, (x,))
    # Caffe's formula: (g - mean(g) - mean(g * y) * y) / sqrt(var + eps)
    g = rand(3, 2, 4, seed=9)
    y = layer(x)
    gx, = torch.autograd.grad(y, x, g)
    xd, yd = x.detach(), y.detach()
    var = xd.var(dim=(0, 2), unbiased=False, keepdim=True)
    ref = (g - g.mean(dim=(0, 2), keepdim=True) - (g * yd).mean(dim=(0, 2), keepdim=True) * yd) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(gx, ref)


def test_batchnorm_global_stats(make_layer):
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.01 }', (2, 3, 2, 2), phase=pb.TEST)
    assert layer.use_global_stats
    with torch.no_grad():
        layer.mean.copy_(torch.tensor([2.0, 4.0, 6.0]))
        layer.variance.copy_(torch.tensor([8.0, 2.0, 4.0]))
        layer.scale_factor.fill_(2.0)
    x = rand(2, 3, 2, 2)
    mean = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    var = torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), (x - mean) / torch.sqrt(var + 0.01))
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    torch.testing.assert_close(xg.grad, (1 / torch.sqrt(var + 0.01)).expand_as(x))
    before = [b.clone() for b in layer.blobs()]
    layer(x)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.blobs()))  # TEST never updates
    # a zero scale factor means zero statistics
    with torch.no_grad():
        layer.scale_factor.zero_()
    torch.testing.assert_close(layer(x), x / torch.sqrt(torch.tensor(0.01, dtype=torch.float64)))
    # use_global_stats wins over the phase, both ways
    forced = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true }', (2, 3), phase=pb.TRAIN)
    assert forced.use_global_stats
    batch = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', (2, 3), phase=pb.TEST)
    assert not batch.use_global_stats


def test_batchnorm_2d_and_1d_bottoms(make_layer):
    layer = make_layer('type: "BatchNorm"', (5, 3), phase=pb.TRAIN)
    x = rand(5, 3)
    torch.testing.assert_close(layer(x), (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5))
    one = make_layer('type: "BatchNorm"', (6,), phase=pb.TRAIN)
    assert tuple(one.mean.shape) == (1,)
    v = rand(6)
    torch.testing.assert_close(one(v), (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5))


def test_batchnorm_refuses_learned_statistics(make_layer):
    with pytest.raises(NetDefinitionError, match="lr_mult must be 0"):
        make_layer('type: "BatchNorm" param { lr_mult: 1 }', (2, 3))
    make_layer('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }', (2, 3))


# --- MVN ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("normvar", [False, True])
def test_mvn_forward(make_layer, across, normvar):
    layer = make_layer(f'type: "MVN" mvn_param {{ across_channels: {str(across).lower()} '
                       f'normalize_variance: {str(normvar).lower()} eps: 0.01 }}', (2, 3, 4, 5))
    x = rand(2, 3, 4, 5) * 3 + 1
    dims = (1, 2, 3) if across else (2, 3)
    ref = x - x.mean(dim=dims, keepdim=True)
    if normvar:
        ref = ref / (torch.sqrt((ref * ref).mean(dim=dims, keepdim=True)) + 0.01)  # eps after the sqrt
    torch.testing.assert_close(layer(x), ref)


def test_mvn_backward_is_caffes(make_layer):
    plain = make_layer('type: "MVN" mvn_param { normalize_variance: false }', (2, 3, 4))
    assert gradcheck(plain, (rand(2, 3, 4).requires_grad_(),))
    layer = make_layer('type: "MVN" mvn_param { eps: 0.5 }', (2, 3, 4))
    x = rand(2, 3, 4).requires_grad_()
    g = rand(2, 3, 4, seed=3)
    y = layer(x)
    gx, = torch.autograd.grad(y, x, g)
    # Caffe: (g - mean(g) - y * mean(g * y)) / (std + eps)
    yd = y.detach()
    std = x.detach().std(dim=2, unbiased=False, keepdim=True)
    ref = (g - g.mean(dim=2, keepdim=True) - yd * (g * yd).mean(dim=2, keepdim=True)) / (std + 0.5)
    torch.testing.assert_close(gx, ref)
    # with eps = 0 that is the true derivative
    exact = make_layer('type: "MVN" mvn_param { eps: 0 }', (2, 3, 4))
    assert gradcheck(exact, (rand(2, 3, 4).requires_grad_(),))
