"""Convolution, Deconvolution, InnerProduct and Pooling against loops transcribing Caffe."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from netcompress import ops
from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb

from graph_helpers import in_graph

FLT_MAX = float(np.finfo(np.float32).max)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def params_call(layer, *inputs_and_params):
    """Call `layer` with its blobs replaced (so gradcheck can differentiate them)."""
    n = len(layer.blob_names)
    xs, ps = inputs_and_params[:-n], inputs_and_params[-n:]
    return torch.func.functional_call(layer, dict(zip(layer.blob_names, ps)), tuple(xs))


def blobs_for_grad(layer):
    return tuple(b.detach().clone().requires_grad_() for b in layer.blobs())


# --- Convolution ------------------------------------------------------------------------------

def conv2d_reference(x, w, b, stride, pad, dilation, group):
    """Caffe's convolution as explicit sums (out-of-image taps read zero, as im2col does)."""
    x, w = x.numpy(), w.numpy()
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    # Caffe's C integer division truncates toward zero
    OH = int((H + 2 * pad[0] - (dilation[0] * (KH - 1) + 1)) / stride[0]) + 1
    OW = int((W + 2 * pad[1] - (dilation[1] * (KW - 1) + 1)) / stride[1]) + 1
    y = np.zeros((N, O, OH, OW))
    og = O // group
    for n in range(N):
        for o in range(O):
            g = o // og
            for oh in range(OH):
                for ow in range(OW):
                    acc = 0.0
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                h = oh * stride[0] - pad[0] + kh * dilation[0]
                                ww = ow * stride[1] - pad[1] + kw * dilation[1]
                                if 0 <= h < H and 0 <= ww < W:
                                    acc += x[n, g * Cg + c, h, ww] * w[o, c, kh, kw]
                    y[n, o, oh, ow] = acc + (0.0 if b is None else float(b[o]))
    return torch.from_numpy(y)


CONV_CASES = [
    # prototxt fields, input shape
    ("num_output: 4 kernel_size: 3", (2, 3, 5, 6)),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (2, 3, 5, 5)),
    ("num_output: 6 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 3", (1, 3, 7, 5)),
    ("num_output: 4 kernel_size: 3 dilation: 2 pad: 2 group: 2", (2, 4, 6, 7)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1 bias_term: false", (1, 2, 5, 6)),
    ("num_output: 3 kernel_size: 1", (2, 5, 3, 3)),
    # an input shorter than the kernel: (2 - 3) / 2 truncates to 0 in C, so one output row (zeros past the input)
    ("num_output: 2 kernel_size: 3 stride: 2", (1, 2, 2, 5)),
    ("num_output: 2 kernel_size: 3 stride: 3 dilation: 2 pad: 1", (1, 2, 1, 4)),
]


@pytest.mark.parametrize("fields,shape", CONV_CASES)
def test_convolution_against_loops(make_layer, fields, shape):
    layer = make_layer(f'type: "Convolution" convolution_param {{ {fields} '
                       'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } }',
                       shape)
    x = rand(*shape)
    y = layer(x)
    b = layer.bias.detach() if layer.bias_term else None
    ref = conv2d_reference(x, layer.weight.detach(), b, layer.stride, layer.pad, layer.dilation, layer.group)
    torch.testing.assert_close(y, ref)
    assert tuple(y.shape) == layer.top_shapes([shape])[0]
    assert gradcheck(lambda *a: params_call(layer, *a), (x[:1].clone().requires_grad_(), *blobs_for_grad(layer)))


@pytest.mark.parametrize("channels,num_output,group,spatial,expected", [
    (20, 50, 1, 2, True),     # LeNet conv2: 20 and 50 are not multiples of the block
    (32, 50, 1, 2, True),
    (1, 20, 1, 2, False),     # LeNet conv1: a first layer stays NCHW
    (3, 96, 1, 2, False),
    (32, 64, 1, 2, False),    # aligned on any block (8 or 16)
    (96, 256, 1, 2, False),
    (20, 50, 2, 2, False),    # grouped
    (20, 50, 1, 3, False),    # 3-D
    (20, 50, 1, 1, False),
])
def test_cpu_channels_last_rule(monkeypatch, channels, num_output, group, spatial, expected):
    from netcompress.layers.vision import CONV_LAYOUT_ENV, cpu_channels_last
    monkeypatch.delenv(CONV_LAYOUT_ENV, raising=False)
    if expected and not torch.backends.mkldnn.is_available():
        expected = False
    assert cpu_channels_last(channels, num_output, group, spatial) is expected
    monkeypatch.setenv(CONV_LAYOUT_ENV, "nchw")
    assert cpu_channels_last(channels, num_output, group, spatial) is False


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs PyTorch's oneDNN (mkldnn) CPU backend")
def test_convolution_channels_last_path(make_layer, monkeypatch):
    """LeNet's conv2 in float32 on the CPU runs channels-last: the same results as NCHW up to rounding, its top
    and the gradient it hands down in NCHW order, and NETCOMPRESS_CONV_LAYOUT=nchw gives exactly PyTorch's NCHW
    convolution."""
    from netcompress.layers.vision import CONV_ALGO_ENV, CONV_LAYOUT_ENV
    monkeypatch.setenv(CONV_ALGO_ENV, "aten")  # else this shape takes NNPACK (cpu_fft_conv)
    snippet = ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
               'weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -1 max: 1 } }')
    shape = (8, 20, 12, 12)  # 8 x 8 x 8 = 512 output positions: CHANNELS_LAST_MIN_POSITIONS
    layers = {}
    for layout in ("auto", "nchw"):
        monkeypatch.setenv(CONV_LAYOUT_ENV, layout)
        layers[layout] = make_layer(snippet, shape, dtype=torch.float32)
    assert layers["auto"]._channels_last and not layers["nchw"]._channels_last
    x = rand(*shape).float()
    grads = {}
    for layout, layer in layers.items():
        xi = x.clone().requires_grad_()
        # a layer below whose output is x (as pooling's is), so the gradient reaching it can be inspected
        below = xi * 1.0
        below.retain_grad()
        y = layer(below)
        assert y.is_contiguous()  # NCHW for the layers above
        assert in_graph(y, "_RelayoutBackward") == (layout == "auto")
        y.backward(torch.full_like(y, 0.01))
        grads[layout] = (y.detach(), below.grad, layer.weight.grad, layer.bias.grad)
        assert below.grad.is_contiguous() and layer.weight.grad.is_contiguous()  # the solver's fused ops read these
    for a, b in zip(grads["auto"], grads["nchw"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    w, b = layers["nchw"].weight.detach(), layers["nchw"].bias.detach()
    assert torch.equal(grads["nchw"][0], torch.nn.functional.conv2d(x, w, b))
    # The channels-last path is exactly PyTorch's channels-last convolution (its layout copies are the extension's
    # to_channels_last / to_contiguous, and the gradient reaches oneDNN channels-last, where PyTorch's reorders it).
    xr = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    wr = layers["auto"].weight.detach().clone().requires_grad_()
    br = layers["auto"].bias.detach().clone().requires_grad_()
    yr = torch.nn.functional.conv2d(xr, wr, br)
    yr.backward(torch.full_like(yr, 0.01).contiguous())
    for got, want in zip(grads["auto"], (yr, xr.grad, wr.grad, br.grad)):
        assert torch.equal(got, want)
    # a smaller call (here a batch of 4: 256 positions) stays NCHW, where the conversions would cost more
    x4 = x[:4]
    assert torch.equal(layers["auto"](x4), torch.nn.functional.conv2d(x4, layers["auto"].weight, layers["auto"].bias))


@pytest.mark.parametrize("channels, group, kernel, stride, pad, dilation, size, expected", [
    (20, 1, (5, 5), (1, 1), (0, 0), (1, 1), (12, 12), True),     # LeNet's conv2
    (32, 1, (5, 5), (1, 1), (2, 2), (1, 1), (12, 12), True),     # padded to 16
    (8, 1, (5, 8), (1, 1), (2, 0), (1, 1), (12, 16), True),      # rectangular, sides 5 and 8
    (32, 1, (5, 5), (1, 1), (2, 2), (1, 1), (8, 8), False),      # input 8 < 12 (CIFAR-10's conv3)
    (20, 1, (4, 4), (1, 1), (0, 0), (1, 1), (11, 11), False),    # 4x4: no gain on 2 cores
    (32, 1, (5, 5), (1, 1), (2, 2), (1, 1), (16, 16), False),    # padded input 20 > 16 (CIFAR-10's conv2)
    (64, 1, (3, 3), (1, 1), (1, 1), (1, 1), (8, 8), False),      # 3x3: Winograd tiles, slower
    (20, 1, (9, 9), (1, 1), (0, 0), (1, 1), (12, 12), False),    # kernel above the 8x8 tiles
    (7, 1, (5, 5), (1, 1), (0, 0), (1, 1), (12, 12), False),     # < 8 input channels (LeNet's conv1: 1)
    (20, 2, (5, 5), (1, 1), (0, 0), (1, 1), (12, 12), False),    # grouped
    (20, 1, (5, 5), (2, 2), (0, 0), (1, 1), (12, 12), False),    # strided
    (20, 1, (5, 5), (1, 1), (0, 0), (2, 2), (12, 12), False),    # dilated
    (20, 1, (5, 5), (1, 1), (5, 0), (1, 1), (4, 12), False),     # padding not below the kernel
    (20, 1, (5, 5, 5), (1, 1, 1), (0, 0, 0), (1, 1, 1), (8, 8, 8), False),  # 3-D
])
def test_cpu_fft_conv_rule(monkeypatch, channels, group, kernel, stride, pad, dilation, size, expected):
    from netcompress.layers.vision import CONV_ALGO_ENV, cpu_fft_conv
    monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
    expected = expected and ops.nnpack_available()
    assert cpu_fft_conv(channels, group, kernel, stride, pad, dilation, size) is expected
    monkeypatch.setenv(CONV_ALGO_ENV, "aten")
    assert cpu_fft_conv(channels, group, kernel, stride, pad, dilation, size) is False


@pytest.mark.parametrize("env, value, said", [
    # (a misspelt switch was silently the default; a bad NETCOMPRESS_SIMD the kernel's RuntimeError at its call,
    # reported as a bug of netcompress)
    ("NETCOMPRESS_CONV_ALGO", "nnpack", "NETCOMPRESS_CONV_ALGO must be 'aten' (the rule off) or 'auto'"),
    ("NETCOMPRESS_CONV_LAYOUT", "nhwc", "NETCOMPRESS_CONV_LAYOUT must be 'nchw' (the rule off) or 'auto'"),
    ("NETCOMPRESS_CPU_MATMUL", "mkl", "NETCOMPRESS_CPU_MATMUL must be 'blas' (the rule off) or 'auto'"),
    ("NETCOMPRESS_SIMD", "sse", "NETCOMPRESS_SIMD must be avx512, avx2, baseline or unset, got 'sse'"),
])
def test_a_misspelt_cpu_switch_is_refused(monkeypatch, env, value, said):
    from netcompress.errors import NetcompressError
    from netcompress.layers.vision import CONV_ALGO_ENV, CONV_LAYOUT_ENV, MATMUL_ENV, _rule_off

    monkeypatch.setenv(env, value)
    with pytest.raises(NetcompressError, match=re.escape(said)):
        for switch, off in ((CONV_ALGO_ENV, "aten"), (CONV_LAYOUT_ENV, "nchw"), (MATMUL_ENV, "blas")):
            _rule_off(switch, off, None)
    monkeypatch.setenv(env, {"NETCOMPRESS_SIMD": "AVX2"}.get(env, "Auto"))
    if env == "NETCOMPRESS_SIMD":  # (the kernel takes the lower-case names only)
        with pytest.raises(NetcompressError, match="got 'AVX2'"):
            _rule_off(CONV_ALGO_ENV, "aten", None)
    else:
        assert _rule_off(env, "x", None) is None  # "auto", any case: the default


@pytest.mark.skipif(not ops.nnpack_available(), reason="this PyTorch has no NNPACK for this CPU")
def _rule_and_aten_layers(make_layer, monkeypatch, snippet, shape):
    """The float32 layer as the CPU rules build it, and the same layer under NETCOMPRESS_CONV_ALGO=aten (which stays
    set for the rest of the test)."""
    from netcompress.layers.vision import CONV_ALGO_ENV
    monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
    layer = make_layer(snippet, shape, dtype=torch.float32)
    monkeypatch.setenv(CONV_ALGO_ENV, "aten")
    return layer, make_layer(snippet, shape, dtype=torch.float32)


@pytest.mark.parametrize("pad, bias", [(0, True), (2, False)])
def test_convolution_fft_path(make_layer, monkeypatch, pad, bias):
    """LeNet's conv2 in float32 on the CPU runs by NNPACK (cpu_fft_conv): its top and all three gradients within
    float32 rounding of the exact (float64) convolution, in NCHW order and contiguous; NETCOMPRESS_CONV_ALGO=aten
    gives PyTorch's convolution exactly."""
    from netcompress.layers.vision import CONV_ALGO_ENV
    snippet = ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 pad: %d bias_term: %s '
               'weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -1 max: 1 } }'
               % (pad, "true" if bias else "false"))
    shape = (16, 20, 12, 12)
    layer, plain = _rule_and_aten_layers(make_layer, monkeypatch, snippet, shape)
    assert layer._fft and not plain._fft
    x = rand(*shape).float().requires_grad_()
    y = layer(x)
    assert in_graph(y, "_FftConvBackward") and y.is_contiguous()
    gy = rand(*y.shape, seed=1).float()
    y.backward(gy)
    xd = x.detach().double().requires_grad_()
    wd = layer.weight.detach().double().requires_grad_()
    bd = layer.bias.detach().double().requires_grad_() if bias else None
    yd = torch.nn.functional.conv2d(xd, wd, bd, padding=pad)
    yd.backward(gy.double())
    got = [y, x.grad, layer.weight.grad] + ([layer.bias.grad] if bias else [])
    want = [yd, xd.grad, wd.grad] + ([bd.grad] if bias else [])
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape and g.is_contiguous()
        assert (g.double() - w).abs().max().item() <= 2e-5 * (w.abs().max().item() + 1.0)
    xp = x.detach()
    wp, bp = layer.weight.detach(), (layer.bias.detach() if bias else None)
    xl = xp.contiguous(memory_format=torch.channels_last) if plain._channels_last else xp
    assert torch.equal(plain._conv(xp, wp, bp), torch.nn.functional.conv2d(xl, wp, bp, padding=pad))
    # a float64 net keeps ATen's convolution (NNPACK is float32 only)
    monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
    layer64 = make_layer(snippet, shape)
    x64 = rand(*shape)
    b64 = layer64.bias if bias else None
    assert torch.equal(layer64(x64), torch.nn.functional.conv2d(x64, layer64.weight, b64, padding=pad))


@pytest.mark.skipif(not ops.nnpack_available(), reason="this PyTorch has no NNPACK for this CPU")
def test_convolution_fft_layer_called_on_a_larger_input(make_layer, monkeypatch):
    """A layer set up for 12x12 inputs (FFT rule) and called on 28x28 (a reshaped net) takes ATen's convolution
    for that call, forward and backward (NNPACK's weight gradient would need a 24x24 kernel), and NNPACK again
    for 12x12."""
    from netcompress.layers.vision import CONV_ALGO_ENV
    snippet = ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 '
               'weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } }')
    monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
    layer = make_layer(snippet, (4, 20, 12, 12), dtype=torch.float32)
    assert layer._fft
    big = rand(4, 20, 28, 28).float().requires_grad_()
    y = layer(big)
    assert not in_graph(y, "_FftConvBackward")
    y.sum().backward()
    assert big.grad.shape == big.shape and layer.weight.grad.shape == layer.weight.shape
    assert in_graph(layer(rand(4, 20, 12, 12).float().requires_grad_()), "_FftConvBackward")


@pytest.mark.skipif(not ops.nnpack_available(), reason="this PyTorch has no NNPACK for this CPU")
@pytest.mark.parametrize("kept, path", [(2, "sparse"), (3, "aten")])
def test_convolution_fft_path_kernel_with_zeros(make_layer, monkeypatch, kept, path):
    """A kernel with a zero (DNS, INQ, a pruned model) takes a direct sum for its forward: over the nonzero weights
    (ops.sparse_conv2d) where at most SPARSE_MAX_DENSITY of them are nonzero, else ATen's, exactly
    NETCOMPRESS_CONV_ALGO=aten's values. Either way, where a window's products are all zero the top is exactly 0
    (FFT tiles leave ~1e-8 there, which would decide max pooling's ties) and windows that agree where the kernel
    is nonzero give the same bits. The data gradient is over the nonzero weights too where the forward was; the
    weight gradient stays NNPACK's (a pruned weight's too); all within float32 rounding."""
    from netcompress.layers.vision import SPARSE_MAX_DENSITY
    snippet = ('type: "Convolution" convolution_param { num_output: 50 kernel_size: 5 bias_term: false '
               'weight_filler { type: "xavier" } }')
    shape = (16, 20, 12, 12)
    layer, plain = _rule_and_aten_layers(make_layer, monkeypatch, snippet, shape)
    with torch.no_grad():
        layer.weight[:, :, :, kept:] = 0  # the kernel's right part pruned
        plain.weight.copy_(layer.weight)
    assert (kept / 5 <= SPARSE_MAX_DENSITY) == (path == "sparse")
    x = rand(*shape).float()
    x[:, :, :, :3] = 0  # the windows at the left edge see only zeros under the kept taps
    x[:, :, :, 7:9] = x[:, :, :, 2:4]  # windows 2 and 7 agree under two kept columns, not under the pruned ones
    xg = x.clone().requires_grad_()
    y = layer(xg)
    assert in_graph(y, "_FftConvBackward")
    if path == "aten":
        assert torch.equal(y.detach(), plain(x).detach())
    else:
        assert torch.equal(y.detach(), ops.sparse_conv2d(x, layer.weight.detach(), None, (0, 0)))
        assert torch.equal(y[:, :, :, 7], y[:, :, :, 2])  # the same bits: max pooling's ties as Caffe's
    assert (y[:, :, :, 0] == 0).all()  # exact zeros, as Caffe's direct sums give
    gy = rand(*y.shape, seed=1).float()
    y.backward(gy)
    xd, wd = x.double().requires_grad_(), layer.weight.detach().double().requires_grad_()
    yd = torch.nn.functional.conv2d(xd, wd)
    assert (y.detach().double() - yd).abs().max().item() <= 2e-5 * (yd.abs().max().item() + 1.0)
    yd.backward(gy.double())
    for g, w in ((xg.grad, xd.grad), (layer.weight.grad, wd.grad)):
        assert (g.double() - w).abs().max().item() <= 2e-5 * (w.abs().max().item() + 1.0)
    if path == "sparse":  # the data gradient over the nonzero weights too
        assert torch.equal(xg.grad, ops.sparse_conv2d_input(gy, layer.weight.detach(), x.shape[2:], (0, 0)))
    # with every weight nonzero the same layer's forward is NNPACK's: not ATen's bits
    with torch.no_grad():
        layer.weight.copy_(rand(50, 20, 5, 5, seed=2).float())
        plain.weight.copy_(layer.weight)
        assert not torch.equal(layer(x), plain(x))


@pytest.mark.parametrize("kernel, pad, bias, needs_input_grad", [(5, 0, True, False), (3, 1, False, True)])
def test_convolution_single_channel_direct_path(make_layer, monkeypatch, kernel, pad, bias, needs_input_grad):
    """A single-channel input (LeNet's conv1) in float32 on the CPU runs as direct sums (cpu_direct_conv): its top
    and gradients within float32 rounding of the exact convolution, the same bits on 1 and 2 threads, and a data
    gradient where the input needs one; NETCOMPRESS_CONV_ALGO=aten gives PyTorch's convolution exactly."""
    from netcompress.layers.vision import CONV_ALGO_ENV
    snippet = ('type: "Convolution" convolution_param { num_output: 20 kernel_size: %d pad: %d bias_term: %s '
               'weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -1 max: 1 } }'
               % (kernel, pad, "true" if bias else "false"))
    shape = (16, 1, 28, 28)
    layer, plain = _rule_and_aten_layers(make_layer, monkeypatch, snippet, shape)
    assert layer._direct and not plain._direct
    x = rand(*shape).float()
    gy = rand(*layer.top_shapes([shape])[0], seed=1).float()
    old = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            layer.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_(needs_input_grad)
            y = layer(xg)
            assert in_graph(y, "_DirectConvBackward")
            y.backward(gy)
            runs.append([y.detach(), layer.weight.grad] + ([layer.bias.grad] if bias else [])
                        + ([xg.grad] if needs_input_grad else []))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    xd = x.double().requires_grad_(needs_input_grad)
    wd = layer.weight.detach().double().requires_grad_()
    bd = layer.bias.detach().double().requires_grad_() if bias else None
    yd = torch.nn.functional.conv2d(xd, wd, bd, padding=pad)
    yd.backward(gy.double())
    want = [yd, wd.grad] + ([bd.grad] if bias else []) + ([xd.grad] if needs_input_grad else [])
    for g, w in zip(runs[0], want):
        assert g.dtype == torch.float32 and g.shape == w.shape and g.is_contiguous()
        assert (g.double() - w).abs().max().item() <= 2e-5 * (w.abs().max().item() + 1.0)
    bp = layer.bias.detach() if bias else None
    assert torch.equal(plain._conv(x, layer.weight.detach(), bp),
                       torch.nn.functional.conv2d(x, layer.weight.detach(), bp, padding=pad))
    # outside the rule: 5x5 padded (oneDNN's kernel is faster there), more than one channel, stride 2
    for snip, shp in (('num_output: 20 kernel_size: 5 pad: 2', shape),
                      ('num_output: 20 kernel_size: 3', (2, 3, 28, 28)),
                      ('num_output: 20 kernel_size: 3 stride: 2', shape)):
        monkeypatch.delenv(CONV_ALGO_ENV, raising=False)
        assert not make_layer('type: "Convolution" convolution_param { %s }' % snip, shp, dtype=torch.float32)._direct


def test_convolution_blob_shapes_and_fillers(make_layer):
    layer = make_layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 group: 2 }',
                       (1, 4, 5, 5))
    assert layer.blob_names == ["weight", "bias"]
    assert tuple(layer.weight.shape) == (6, 2, 3, 2) and tuple(layer.bias.shape) == (6,)
    # Caffe's default FillerParameter is constant 0
    assert torch.all(layer.weight == 0) and torch.all(layer.bias == 0)
    de = make_layer('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 3 group: 2 }',
                    (1, 4, 5, 5))
    assert tuple(de.weight.shape) == (4, 3, 3, 3)


def test_convolution_nd_and_axis(make_layer):
    # 1-D and 3-D spatial convolutions; a channel axis other than 1.
    l1 = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad: 1 '
                    'weight_filler { type: "gaussian" } }', (2, 3, 7))
    assert tuple(l1(rand(2, 3, 7)).shape) == (2, 2, 7)
    l3 = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 kernel_size: 1 '
                    'kernel_size: 3 stride: 2 weight_filler { type: "gaussian" } }', (1, 3, 5, 4, 6))
    assert l3.top_shapes([(1, 3, 5, 4, 6)]) == [(1, 2, 2, 2, 2)]
    assert tuple(l3(rand(1, 3, 5, 4, 6)).shape) == (1, 2, 2, 2, 2)
    la = make_layer('type: "Convolution" convolution_param { axis: 2 num_output: 2 kernel_size: 3 '
                    'weight_filler { type: "gaussian" } }', (2, 3, 4, 6))
    x = rand(2, 3, 4, 6)
    y = la(x)
    assert tuple(y.shape) == (2, 3, 2, 4)
    torch.testing.assert_close(y[1, 2], la(x[1:2, 2])[0] if False else
                               torch.nn.functional.conv1d(x[1, 2][None], la.weight, la.bias)[0])


def test_convolution_multiple_bottoms_share_weights(make_layer):
    p = ('type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb" convolution_param { num_output: 2 '
         'kernel_size: 3 weight_filler { type: "gaussian" } }')
    layer = make_layer(p, (1, 2, 5, 5), (1, 2, 5, 5))
    a, b = rand(1, 2, 5, 5, seed=1), rand(1, 2, 5, 5, seed=2)
    ya, yb = layer(a, b)
    torch.testing.assert_close(yb, layer(b, a)[0])
    with pytest.raises(NetDefinitionError, match="as many tops as bottoms"):
        make_layer('type: "Convolution" bottom: "a" top: "y" top: "z" convolution_param { num_output: 2 kernel_size: 1 }',
                   (1, 2, 3, 3))


@pytest.mark.parametrize("fields,msg", [
    ("num_output: 2", "kernel size must be specified"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", "either kernel or kernel_h/kernel_w"),
    ("num_output: 2 kernel_h: 3", "both kernel_h and kernel_w"),
    ("num_output: 3 kernel_size: 1 group: 2", "multiples of group"),
    ("kernel_size: 1", "num_output must be positive"),
    ("num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3", "once per spatial axis"),
    ("num_output: 2 kernel_size: 9", "not positive"),
])
def test_convolution_errors(make_layer, fields, msg):
    with pytest.raises(NetDefinitionError, match=msg):
        layer = make_layer(f'type: "Convolution" convolution_param {{ {fields} }}', (1, 4, 5, 5))
        layer.top_shapes([(1, 4, 5, 5)])


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution", "DNSConvolution", "INQConvolution"])
def test_a_convolution_over_no_channels_is_refused(make_layer, kind):
    # (set up as if it had them, it returned a top of no channels at run time: the next layer failed in ATen)
    with pytest.raises(NetDefinitionError, match=r"the bottom has no channels \(shape \[2, 0, 8, 8\], channel "
                                                 r"axis 1\)"):
        make_layer(f'type: "{kind}" convolution_param {{ num_output: 2 kernel_size: 3 }}', (2, 0, 8, 8))


# Run in a child process: without _PlainConv, oneDNN's data gradient crashes the process (SIGFPE or SIGSEGV) at
# these strides. Each layer's float32 values and gradients on the device (argv[1]) are compared with the same
# layer in float64 on the CPU.
_HUGE_STRIDE_CHECK = r"""
import sys
import torch
from google.protobuf import text_format
from netcompress.layers import LayerContext, create_layer
from netcompress.layers import vision
from netcompress.proto import caffe_pb2 as pb
from netcompress.rng import CaffeRNG

device = sys.argv[1]
calls = []
plain = vision._PlainConv.apply
vision._PlainConv.apply = lambda *a: calls.append(1) or plain(*a)


def layer(snippet, shape, dtype, device):
    p = text_format.Parse(snippet, pb.LayerParameter(name="c", bottom=["x"], top=["y"]))
    return create_layer(p, [shape], LayerContext(phase=pb.TRAIN, dtype=dtype, generator=CaffeRNG(3),
                                                 device=torch.device(device)))


for kind, shape, geometry in [
        ("Convolution", (2, 20, 12, 12), "kernel_size: 5 stride: 2147483647"),  # LeNet's conv2 (the fuzz's case)
        ("Convolution", (2, 3, 9), "kernel_size: 3 pad: 1 stride: 30000"),
        ("Convolution", (1, 2, 40000), "kernel_size: 5 stride: 30000"),  # two windows
        ("Convolution", (1, 64, 6, 6, 6), "kernel_size: 5 stride: 6642"),
        ("Convolution", (2, 4, 7, 7), "kernel_size: 3 stride: 5000 stride: 1"),
        ("Deconvolution", (2, 4, 1, 1), "kernel_size: 3 stride: 2147483647"),
        ("Deconvolution", (2, 4, 1, 1, 1), "kernel_size: 2 stride: 30000"),
        ("Deconvolution", (2, 4, 3), "kernel_size: 3 pad: 1 stride: 100000")]:
    snippet = (f'type: "{kind}" convolution_param {{ num_output: 4 {geometry} '
               'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }')
    f32, f64 = layer(snippet, shape, torch.float32, device), layer(snippet, shape, torch.float64, "cpu")
    with torch.no_grad():
        for a, b in zip(f32.parameters(), f64.parameters()):
            b.copy_(a)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ys, grads = [], []
    for lay, dtype, dev in ((f32, torch.float32, device), (f64, torch.float64, "cpu")):
        xi = x.to(dev, dtype).requires_grad_()
        y = lay(xi)
        gy = torch.linspace(-1, 1, y.numel(), dtype=dtype, device=dev).reshape(y.shape)
        grads.append(torch.autograd.grad(y, [xi, *lay.parameters()], gy))
        ys.append(y)
    assert tuple(ys[0].shape) == tuple(f32.top_shapes([shape])[0]), (kind, geometry)
    torch.testing.assert_close(ys[0].cpu().double(), ys[1], rtol=1e-4, atol=1e-4)
    for g32, g64 in zip(*grads):
        torch.testing.assert_close(g32.cpu().double(), g64, rtol=1e-4, atol=1e-4)
assert len(calls) == (16 if device == "cpu" else 8), calls  # every CPU layer took _PlainConv
print("ok")
"""


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_convolution_with_a_stride_past_onednn_limit(device):
    r = subprocess.run([sys.executable, "-c", _HUGE_STRIDE_CHECK, device], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-3000:])


def deconv2d_reference(x, w, b, stride, pad, group):
    """Caffe's deconvolution: every input pixel scatters its weighted kernel (col2im), then crop pad."""
    x, w = x.numpy(), w.numpy()
    N, C, H, W = x.shape
    _, Og, KH, KW = w.shape
    O = Og * group
    Cg = C // group
    OH = stride[0] * (H - 1) + KH - 2 * pad[0]
    OW = stride[1] * (W - 1) + KW - 2 * pad[1]
    full = np.zeros((N, O, stride[0] * (H - 1) + KH, stride[1] * (W - 1) + KW))
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for h in range(H):
                for ww in range(W):
                    for o in range(Og):
                        full[n, g * Og + o, h * stride[0]:h * stride[0] + KH, ww * stride[1]:ww * stride[1] + KW] += \
                            x[n, c, h, ww] * w[c, o]
    y = full[:, :, pad[0]:pad[0] + OH, pad[1]:pad[1] + OW]
    if b is not None:
        y = y + b.numpy().reshape(1, -1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray(y))


@pytest.mark.parametrize("fields,shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (2, 2, 3, 4)),
    ("num_output: 4 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 group: 2", (1, 4, 3, 3)),
])
def test_deconvolution_against_loops(make_layer, fields, shape):
    layer = make_layer(f'type: "Deconvolution" convolution_param {{ {fields} '
                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', shape)
    x = rand(*shape)
    y = layer(x)
    ref = deconv2d_reference(x, layer.weight.detach(), layer.bias.detach(), layer.stride, layer.pad, layer.group)
    torch.testing.assert_close(y, ref)
    assert tuple(y.shape) == layer.top_shapes([shape])[0]
    assert gradcheck(lambda *a: params_call(layer, *a), (x[:1].clone().requires_grad_(), *blobs_for_grad(layer)))


# --- InnerProduct ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,shape,top", [
    ("num_output: 4", (2, 3, 2, 2), (2, 4)),
    ("num_output: 4 axis: 2", (2, 3, 2, 5), (2, 3, 4)),
    ("num_output: 4 transpose: true", (3, 5), (3, 4)),
    ("num_output: 2 bias_term: false axis: -1", (2, 3, 5), (2, 3, 2)),
])
def test_inner_product(make_layer, fields, shape, top):
    layer = make_layer(f'type: "InnerProduct" inner_product_param {{ {fields} weight_filler {{ type: "gaussian" }} '
                       'bias_filler { type: "gaussian" } }', shape)
    x = rand(*shape)
    y = layer(x)
    assert tuple(y.shape) == top == layer.top_shapes([shape])[0]
    K = layer.K
    w = layer.weight.detach()
    w = w.t() if layer.transpose else w
    assert tuple(layer.weight.shape) == ((K, 4) if layer.transpose else (layer.num_output, K))
    x2 = x.reshape(-1, K).numpy()
    ref = x2 @ w.numpy().T + (layer.bias.detach().numpy() if layer.bias_term else 0)
    torch.testing.assert_close(y, torch.from_numpy(ref).reshape(top))
    assert gradcheck(lambda *a: params_call(layer, *a), (x[:1].clone().requires_grad_(), *blobs_for_grad(layer)))


def test_inner_product_checks_feature_count(make_layer):
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', (2, 6))
    with pytest.raises(NetDefinitionError, match="the weights expect 6"):
        layer(rand(2, 5))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs PyTorch's oneDNN (mkldnn) CPU backend")
@pytest.mark.parametrize("fields", ["num_output: 96", "num_output: 96 transpose: true",
                                    "num_output: 96 bias_term: false"])
def test_inner_product_onednn_path(make_layer, monkeypatch, fields):
    """A float32 CPU InnerProduct of >= ONEDNN_MATMUL_MIN_MACS multiply-adds runs its three products on oneDNN:
    the float64 results to float32 rounding, the same bits on 1 and 2 threads, gradients only for what needs
    one, and NETCOMPRESS_CPU_MATMUL=blas gives exactly the BLAS products (F.linear, as before)."""
    import torch.nn.functional as F

    from netcompress.layers.vision import MATMUL_ENV, ONEDNN_MATMUL_MIN_MACS
    shape = (128, 8, 10, 10)  # 128 x 800 x 96 multiply-adds
    assert 128 * 800 * 96 >= ONEDNN_MATMUL_MIN_MACS
    monkeypatch.delenv(MATMUL_ENV, raising=False)
    layer = make_layer(f'type: "InnerProduct" inner_product_param {{ {fields} weight_filler {{ type: "gaussian" }} '
                       'bias_filler { type: "gaussian" } }', shape, dtype=torch.float32)
    x = rand(*shape).float().requires_grad_()
    gy = rand(128, 96, seed=1).float()
    blobs = [b for b in (layer.weight, getattr(layer, "bias", None)) if b is not None]

    def run():
        y = layer(x)
        grads = torch.autograd.grad(y, [x, *blobs], gy)
        return y, [y.detach(), *grads]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, one = run()
        torch.set_num_threads(2)
        _, two = run()
    finally:
        torch.set_num_threads(threads)
    assert in_graph(y1, "_OneDnnLinearBackward")
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    # against float64
    xd, wd = x.detach().double().reshape(128, 800), layer.weight.detach().double()
    wd = wd if layer.transpose else wd.t()  # [K, N]
    ref = [xd @ wd + (layer.bias.detach().double() if layer.bias_term else 0)]
    ref.append((gy.double() @ wd.t()).reshape(shape))
    ref.append(xd.t() @ gy.double() if layer.transpose else gy.double().t() @ xd)
    if layer.bias_term:
        ref.append(gy.double().sum(0))
    for got, want in zip(one, ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    # only the gradients asked for: a frozen layer's input gradient alone
    for b in blobs:
        b.requires_grad_(False)
    (gx,) = torch.autograd.grad(layer(x), [x], gy)
    torch.testing.assert_close(gx, one[1])
    for b in blobs:
        b.requires_grad_(True)
    # BLAS everywhere (a layer built under the switch): exactly PyTorch's own product
    monkeypatch.setenv(MATMUL_ENV, "blas")
    blas = make_layer(f'type: "InnerProduct" inner_product_param {{ {fields} weight_filler {{ type: "gaussian" }} '
                      'bias_filler { type: "gaussian" } }', shape, dtype=torch.float32)
    w = blas.weight.detach()
    y = blas(x)
    assert not in_graph(y, "_OneDnnLinearBackward")
    want = x.detach().reshape(128, 800) @ w if blas.transpose else F.linear(x.detach().reshape(128, 800), w)
    assert torch.equal(y.detach(), want + blas.bias.detach() if blas.bias_term else want)


def test_inner_product_small_or_double_stays_blas(make_layer, monkeypatch):
    """Below ONEDNN_MATMUL_MIN_MACS (LeNet's ip2), and in float64, the products stay PyTorch's (BLAS)."""
    from netcompress.layers.vision import MATMUL_ENV
    monkeypatch.delenv(MATMUL_ENV, raising=False)
    for dtype, shape in ((torch.float32, (64, 500)), (torch.float64, (128, 800))):
        layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 10 '
                           'weight_filler { type: "gaussian" } }', shape, dtype=dtype)
        x = rand(*shape).to(dtype).requires_grad_()
        y = layer(x)
        assert not in_graph(y, "_OneDnnLinearBackward")
        assert torch.equal(y, torch.nn.functional.linear(x, layer.weight) + layer.bias)


# --- Pooling ----------------------------------------------------------------------------------------

def caffe_pooled(size, k, p, s, any_pad):
    out = int(math.ceil(np.float32(size + 2 * p - k) / np.float32(s))) + 1
    if any_pad and (out - 1) * s >= size + p:
        out -= 1
    return out


def pool_reference(x, method, k, s, p):
    """Transcription of Caffe's PoolingLayer::Forward_cpu (MAX with its mask, AVE)."""
    x = x.numpy()
    N, C, H, W = x.shape
    any_pad = p[0] > 0 or p[1] > 0
    PH = caffe_pooled(H, k[0], p[0], s[0], any_pad)
    PW = caffe_pooled(W, k[1], p[1], s[1], any_pad)
    y = np.zeros((N, C, PH, PW))
    mask = np.full((N, C, PH, PW), -1.0)
    for n in range(N):
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
                    if method == "MAX":
                        he, we = min(hs + k[0], H), min(ws + k[1], W)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best = -FLT_MAX
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if x[n, c, h, w] > best:
                                    best = x[n, c, h, w]
                                    mask[n, c, ph, pw] = h * W + w
                        y[n, c, ph, pw] = best
                    else:
                        he, we = min(hs + k[0], H + p[0]), min(ws + k[1], W + p[1])
                        pool_size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                        acc = 0.0
                        for h in range(hs, he):
                            for w in range(ws, we):
                                acc += x[n, c, h, w]
                        # C float division: 0 / 0 is NaN
                        y[n, c, ph, pw] = acc / pool_size if pool_size else float("nan")
    return torch.from_numpy(y), torch.from_numpy(mask)


POOL_CASES = [
    # fields, input (H, W), expected output (H, W)
    ("kernel_size: 3 stride: 2 pad: 1", (5, 5), (3, 3)),
    ("kernel_size: 3 stride: 2", (6, 6), (3, 3)),          # ceil: the last window overhangs
    ("kernel_size: 2 stride: 2", (7, 5), (4, 3)),
    ("kernel_size: 3 stride: 2 pad: 1", (6, 7), (4, 4)),
    ("kernel_size: 3 stride: 3 pad: 2", (5, 5), (3, 3)),   # pad > kernel / 2: Caffe allows it
    ("kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", (4, 5), (4, 3)),
    ("kernel_size: 1 stride: 2", (6, 6), (4, 4)),          # unpadded: Caffe keeps a window past the input
    ("kernel_size: 2 stride: 3 pad_h: 0 pad_w: 1", (7, 7), (3, 3)),
    # strides and kernels far past the input (Caffe runs them; padding the input to span every window ran out
    # of memory or overflowed a size)
    ("kernel_size: 2 stride: 1073741824", (12, 12), (2, 2)),   # the second window starts past the input
    ("kernel_h: 3 kernel_w: 2 stride_h: 100000 stride_w: 5", (12, 12), (2, 3)),
    ("kernel_size: 100000 stride: 100000", (12, 9), (1, 1)),
    ("kernel_size: 40 stride: 1000000", (12, 12), (1, 1)),
    ("kernel_size: 3 stride: 1073741824 pad: 1", (12, 12), (1, 1)),
    ("kernel_size: 100000 stride: 2147483647", (12, 12), (1, 1)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("fields,hw,out", POOL_CASES)
def test_pooling_against_caffe_loops(make_layer, method, fields, hw, out):
    shape = (2, 3, *hw)
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: {method} {fields} }}', shape)
    assert layer.top_shapes([shape]) == [(2, 3, *out)]
    x = rand(*shape)
    y = layer(x)
    ref, mask = pool_reference(x, method, layer.kernel, layer.stride, layer.pad)
    torch.testing.assert_close(y, ref, equal_nan=True)
    if method == "MAX" and torch.isfinite(ref).all() and (ref > -FLT_MAX).all():
        assert gradcheck(layer, (x[:1, :1].clone().requires_grad_(),))
        # the gradient goes to the recorded argmax only
        xg = x.clone().requires_grad_()
        layer(xg).sum().backward()
        counts = torch.zeros(x.numel(), dtype=torch.float64)
        flat = mask.reshape(2, 3, -1).long() + (torch.arange(6).reshape(2, 3, 1) * hw[0] * hw[1])
        counts.index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), dtype=torch.float64))
        torch.testing.assert_close(xg.grad.reshape(-1), counts)
    if method == "AVE" and torch.isfinite(ref).all():
        assert gradcheck(layer, (x[:1, :1].clone().requires_grad_(),))


def test_pooling_empty_window_past_the_input(make_layer):
    # kernel 1, stride 2, no pad, H = 6: Caffe's 4th row starts at h = 6 and holds no input.
    mx = make_layer('type: "Pooling" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 1 stride: 2 }',
                    (1, 1, 6, 6))
    y, m = mx(rand(1, 1, 6, 6))
    assert torch.all(y[0, 0, 3] == -FLT_MAX) and torch.all(m[0, 0, 3] == -1)
    ave = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 1 stride: 2 }', (1, 1, 6, 6))
    assert torch.isnan(ave(rand(1, 1, 6, 6))[0, 0, 3]).all()  # Caffe divides 0 by a pool size of 0


def test_pooling_max_floor_keeps_nan_and_passes_no_gradient_below_it(make_layer):
    # The path of Caffe's own window geometry (a window past the input): a -inf window outputs Caffe's -FLT_MAX
    # with mask -1 and no gradient on every torch version; a NaN stays NaN.
    mx = make_layer('type: "Pooling" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 1 stride: 2 }',
                    (1, 1, 6, 6))
    x = rand(1, 1, 6, 6)
    x[0, 0, 0, 0], x[0, 0, 0, 2] = float("nan"), float("-inf")
    x.requires_grad_()
    y, m = mx(x)
    assert torch.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == -FLT_MAX and m[0, 0, 0, 1] == -1
    # finite windows pass gradient 1 to their inputs; the -inf window none
    (y[0, 0, 1:3, 1:3].sum() + y[0, 0, 0, 1]).backward()
    g = x.grad[0, 0]
    assert g[0, 2] == 0 and g[2, 2] == 1 and g[4, 4] == 1 and g.sum() == 4


def test_pooling_ave_divisor_at_the_border(make_layer):
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', (1, 1, 5, 5))
    y = layer(torch.ones(1, 1, 5, 5, dtype=torch.float64))
    # corner windows cover 2x2 inputs of a 3x3 window inside the padded image: 4/9
    torch.testing.assert_close(y[0, 0], torch.tensor([[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1.0, 6 / 9],
                                                      [4 / 9, 6 / 9, 4 / 9]], dtype=torch.float64))
    # kernel 3 stride 2 on 6 without pad: the last window overhangs the image by one; the
    # overhang is not counted (the divisor is 2 x 2), so the corner is the mean of x[4:6, 4:6]
    over = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }', (1, 1, 6, 6))
    x = rand(1, 1, 6, 6)
    z = over(x)
    torch.testing.assert_close(z[0, 0, 2, 2], x[0, 0, 4:6, 4:6].mean())
    torch.testing.assert_close(z[0, 0, 0, 2], x[0, 0, 0:3, 4:6].mean())


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (3, 3, 2)])  # PyTorch's own pooling; explicit padding
def test_pooling_max_mask_top(make_layer, k, s, p):
    layer = make_layer('type: "Pooling" top: "y" top: "mask" pooling_param { pool: MAX '
                       f'kernel_size: {k} stride: {s} pad: {p} }}', (2, 2, 5, 5))
    x = rand(2, 2, 5, 5)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 10.0  # tie: Caffe keeps the first in row-major order
    y, mask = layer(x)
    ref, ref_mask = pool_reference(x, "MAX", (k, k), (s, s), (p, p))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(mask, ref_mask)
    assert float(mask[0, 0, 0, 0]) == 0.0
    assert layer.top_shapes([(2, 2, 5, 5)]) == [(2, 2, 3, 3)] * 2
    with pytest.raises(NetDefinitionError, match="only for MAX"):
        make_layer('type: "Pooling" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 }', (1, 1, 4, 4))


def test_global_pooling(make_layer):
    layer = make_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', (2, 3, 4, 5))
    x = rand(2, 3, 4, 5)
    assert layer.top_shapes([(2, 3, 4, 5)]) == [(2, 3, 1, 1)]
    torch.testing.assert_close(layer(x), x.mean(dim=(2, 3), keepdim=True))
    # the kernel follows the actual input size
    torch.testing.assert_close(layer(rand(1, 3, 6, 2)), rand(1, 3, 6, 2).mean(dim=(2, 3), keepdim=True))
    mx = make_layer('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', (2, 3, 4, 5))
    torch.testing.assert_close(mx(x), x.amax(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("fields,msg", [
    ("pool: MAX", "needs kernel_size"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
    ("pool: MAX global_pooling: true kernel_size: 2", "kernel size cannot be specified"),
    ("pool: MAX global_pooling: true stride: 2", "only pad 0 and stride 1"),
    ("pool: MAX kernel_size: 3 pad: 3", "must be smaller than the kernel"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", "padding is implemented only for AVE and MAX"),
    ("pool: MAX kernel_size: 3 pad_h: 1", "pad OR both pad_h and pad_w"),
    ("pool: MAX kernel_size: 3 stride: 2 stride_h: 1 stride_w: 1", "stride OR both"),
    ("pool: MAX kernel_size: 3 stride: 0", "stride dimensions must be positive"),
])
def test_pooling_errors(make_layer, fields, msg):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type Pooling\): .*" + msg):
        make_layer(f'type: "Pooling" pooling_param {{ {fields} }}', (1, 1, 5, 5))
    with pytest.raises(NetDefinitionError, match="4-D bottom"):
        make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', (1, 5, 5))


def test_stochastic_pooling_test_phase(make_layer):
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', (2, 2, 6, 6))
    x = rand(2, 2, 6, 6).abs()
    x[0, 0, :3, :3] = 0.0  # zero window: Caffe outputs 0
    y = layer(x)
    assert tuple(y.shape) == (2, 2, 3, 3)
    ref = torch.zeros_like(y)
    for n in range(2):
        for c in range(2):
            for ph in range(3):
                for pw in range(3):
                    win = x[n, c, ph * 2:min(ph * 2 + 3, 6), pw * 2:min(pw * 2 + 3, 6)]
                    ref[n, c, ph, pw] = (win * win).sum() / win.sum() if win.sum() > 0 else 0.0
    torch.testing.assert_close(y, ref)
    assert gradcheck(layer, ((x[:1, :1] + 0.1).requires_grad_(),))


def test_stochastic_pooling_train_phase(make_layer):
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', (1, 1, 4, 4),
                       phase=pb.TRAIN, seed=5)
    x = torch.tensor([[[[1.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0],
                        [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 1.0, 0.0]]]], dtype=torch.float64)
    for _ in range(20):
        y = layer(x)
        assert float(y[0, 0, 0, 0]) == 1.0   # the only nonzero entry of its window
        assert float(y[0, 0, 0, 1]) == 2.0
        assert float(y[0, 0, 1, 0]) == 0.0   # all-zero window picks its first entry
        assert float(y[0, 0, 1, 1]) in (5.0, 1.0)
    # sampling frequencies follow the values (5 vs 1)
    xs = x.repeat(1, 400, 1, 1)
    picks = layer(xs)[0, :, 1, 1]
    assert abs((picks == 5.0).double().mean().item() - 5 / 6) < 0.06
    # the sampled element gets the gradient
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    assert float(xg.grad.sum()) == 4.0 and set(xg.grad.unique().tolist()) <= {0.0, 1.0}
    # reproducible through the RNG hook
    state = layer.rng_state()
    a = layer(xs)
    layer.set_rng_state(state)
    assert torch.equal(layer(xs), a)


def stochastic_reference(x, kernel, stride, out, u, train):
    """Caffe's stochastic pooling (its GPU kernels) window by window, with the draws u (N, C, *out): windows
    clipped to the input; TRAIN takes the first entry whose running sum reaches u * sum (past the last entry: the
    window's last position, 0 when that lies past the input), TEST sum(x^2) / sum(x). Returns y and, for TRAIN,
    how many picks are input entries (each receives a gradient of 1)."""
    N, C, H, W = x.shape
    y = torch.zeros(N, C, *out, dtype=x.dtype)
    picked_inputs = 0
    for n in range(N):
        for c in range(C):
            for ph in range(out[0]):
                for pw in range(out[1]):
                    hs, ws = ph * stride[0], pw * stride[1]
                    win = x[n, c, hs:min(hs + kernel[0], H), ws:min(ws + kernel[1], W)].reshape(-1)
                    total = float(win.sum()) if win.numel() else 0.0
                    if not train:
                        y[n, c, ph, pw] = float((win * win).sum()) / total if total > 0 else 0.0
                        continue
                    thres, cum, picked = float(u[n, c, ph, pw]) * total, 0.0, None
                    for v in win.tolist():
                        cum += v
                        if cum >= thres:
                            picked = v
                            break
                    if picked is None:
                        past = hs + kernel[0] > H or ws + kernel[1] > W
                        picked = None if past or not win.numel() else float(win[-1])
                    picked_inputs += picked is not None
                    y[n, c, ph, pw] = picked or 0.0
    return y, picked_inputs


@pytest.mark.parametrize("fields,shape,out", [
    ("kernel_size: 2 stride: 1073741824", (2, 3, 12, 12), (2, 2)),  # windows starting past the input
    ("kernel_size: 100000 stride: 100000", (2, 3, 12, 9), (1, 1)),  # a kernel past the input
    ("kernel_h: 3 kernel_w: 40 stride_h: 5 stride_w: 1000000", (2, 2, 12, 12), (3, 1)),
    ("kernel_size: 3 stride: 2", (2, 2, 7, 6), (3, 3)),
])
@pytest.mark.parametrize("phase", [pb.TRAIN, pb.TEST])
def test_stochastic_pooling_past_the_input(make_layer, fields, shape, out, phase):
    # (padding the input to span every window ran out of memory or overflowed a size at these strides)
    layer = make_layer(f'type: "Pooling" pooling_param {{ pool: STOCHASTIC {fields} }}', shape, phase=phase, seed=7)
    x = rand(*shape).abs()
    x[0, 0] = 0.0  # all-zero windows
    g = torch.Generator()
    g.set_state(layer.rng_state())
    u = torch.rand((shape[0], shape[1], *out), generator=g, dtype=torch.float32).double()
    xg = x.clone().requires_grad_()
    y = layer(xg)
    assert tuple(y.shape) == (*shape[:2], *out)
    ref, picked_inputs = stochastic_reference(x, layer.kernel, layer.stride, out, u, phase == pb.TRAIN)
    torch.testing.assert_close(y.detach(), ref)
    y.sum().backward()
    assert torch.isfinite(xg.grad).all()
    if phase == pb.TRAIN:  # a gradient of 1 to the input entry of each pick (none for a pick past the input)
        assert float(xg.grad.sum()) == picked_inputs


# --- SPP ----------------------------------------------------------------------------------------

def spp_reference(x, height, method):
    """Transcription of Caffe's SPPLayer: level i pools with GetPoolingParam's kernel, stride and pad
    (Caffe's Pooling: pool_reference), flattens, and the levels are concatenated; height 1 is the pooling top."""
    N, _, H, W = x.shape
    outs = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = int(math.ceil(H / float(bins))), int(math.ceil(W / float(bins)))
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        y, _ = pool_reference(x, method, (kh, kw), (kh, kw), (ph, pw))
        outs.append(y)
    if height == 1:
        return outs[0]
    return torch.cat([y.reshape(N, -1) for y in outs], dim=1)


def spp(make_layer, height, shape, method="MAX", **kw):
    return make_layer(f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}', shape, **kw)


def test_spp_hand_worked_order(make_layer):
    # levels in order, each flattened channel-major: [level 0: c0, c1][level 1: c0 (2x2), c1 (2x2)]
    layer = spp(make_layer, 2, (1, 2, 4, 4))
    x = torch.arange(32, dtype=torch.float64).reshape(1, 2, 4, 4)
    assert layer(x).tolist() == [[15, 31, 5, 7, 13, 15, 21, 23, 29, 31]]
    ave = spp(make_layer, 2, (1, 2, 4, 4), "AVE")
    assert ave(x).tolist() == [[7.5, 23.5, 2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5]]


@pytest.mark.parametrize("shape,height,top", [
    ((2, 3, 9, 8), 3, (2, 63)),          # Caffe's TestSetup: 3 * (1 + 4 + 16)
    ((4, 3, 1024, 765), 5, (4, 1023)),   # TestEqualOutputDims: 3 * 341
    ((10, 3, 7, 7), 3, (10, 63)),        # TestEqualOutputDims2
    ((2, 3, 9, 8), 1, (2, 3, 1, 1)),     # height 1: the Pooling top itself, 4-D
])
def test_spp_top_shapes_of_caffes_tests(make_layer, shape, height, top):
    assert spp(make_layer, height, shape).top_shapes([shape]) == [top]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height", [1, 2, 3])
@pytest.mark.parametrize("hw", [(9, 8), (7, 7), (6, 9), (13, 11)])
def test_spp_against_caffe_transcription(make_layer, method, height, hw):
    shape = (2, 3, *hw)
    layer = spp(make_layer, height, shape, method)
    x = rand(*shape, seed=height)
    y = layer(x)
    ref = spp_reference(x, height, method)
    torch.testing.assert_close(y, ref)
    assert [tuple(y.shape)] == layer.top_shapes([shape])
    if height > 1:  # the fixed length SPP exists for: 3 * (4**height - 1) / 3 per item
        assert y.shape[1] == 3 * (4 ** height - 1) // 3


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_gradcheck(make_layer, method):
    layer = spp(make_layer, 3, (1, 2, 9, 8), method)
    assert gradcheck(layer, (rand(1, 2, 9, 8, seed=3).requires_grad_(),))
    one = spp(make_layer, 1, (1, 2, 5, 7), method)
    assert gradcheck(one, (rand(1, 2, 5, 7, seed=4).requires_grad_(),))


def test_spp_follows_the_input_size_at_every_forward(make_layer):
    layer = spp(make_layer, 3, (2, 3, 9, 8))
    for hw in [(7, 7), (13, 11), (9, 8)]:
        x = rand(2, 3, *hw, seed=hw[0])
        y = layer(x)
        assert tuple(y.shape) == (2, 63)
        torch.testing.assert_close(y, spp_reference(x, 3, "MAX"))


def test_spp_height_one_is_global_pooling(make_layer):
    x = rand(2, 3, 5, 7)
    torch.testing.assert_close(spp(make_layer, 1, (2, 3, 5, 7))(x), x.amax(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(spp(make_layer, 1, (2, 3, 5, 7), "AVE")(x), x.mean(dim=(2, 3), keepdim=True))


def test_spp_stochastic(make_layer):
    # STOCHASTIC levels need no padding: sizes divisible by 2**(height - 1)
    x = rand(2, 2, 8, 8).abs() + 0.1
    test = spp(make_layer, 2, (2, 2, 8, 8), "STOCHASTIC")
    ref = []
    for k in (8, 4):
        win = x.unfold(2, k, k).unfold(3, k, k)  # (N, C, bins, bins, k, k)
        ref.append(((win * win).sum((-1, -2)) / win.sum((-1, -2))).reshape(2, -1))
    torch.testing.assert_close(test(x), torch.cat(ref, dim=1))  # TEST: Caffe's TEST rule, deterministic
    train = spp(make_layer, 2, (2, 2, 8, 8), "STOCHASTIC", phase=pb.TRAIN, seed=5)
    state = train.rng_state()
    a = train(x)
    for j, k in enumerate((8, 4)):  # every sample is one of its window's values
        win = x.unfold(2, k, k).unfold(3, k, k).reshape(2, 2, -1, k * k)
        got = a[:, [0, 2][j]:[2, 10][j]].reshape(2, 2, -1, 1)
        assert bool(((win - got).abs() < 1e-12).any(-1).all())
    assert train.snapshot_state() is not None
    train.set_rng_state(state)
    assert torch.equal(train(x), a)  # one generator, drawn level by level: reproducible


@pytest.mark.parametrize("snippet,shape,msg", [
    ('spp_param { }', (1, 1, 4, 4), "pyramid_height must be at least 1"),
    ('spp_param { pyramid_height: 2 }', (1, 4, 4), r"4-D bottom \(N, C, H, W\), got shape \[1, 4, 4\]"),
    ('spp_param { pyramid_height: 2 }', (1, 1, 0, 4), "height and width must be positive"),
    ('spp_param { pyramid_height: 4 }', (2, 3, 9, 8),
     r"pyramid level 3 \(8x8 bins\) on a 9x8 input takes pooling kernel \[2, 1\], stride \[2, 1\], pad \[4, 0\], "
     r"which Pooling refuses: pad \[4, 0\] must be smaller than the kernel \[2, 1\]"),
    ('spp_param { pyramid_height: 2 pool: STOCHASTIC }', (1, 1, 9, 8), "padding is implemented only for AVE and MAX"),
])
def test_spp_errors(make_layer, snippet, shape, msg):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type SPP\): .*" + msg):
        make_layer(f'type: "SPP" {snippet}', shape)


def test_spp_refuses_a_forward_input_its_levels_cannot_pool(make_layer):
    layer = spp(make_layer, 3, (1, 1, 9, 8))
    with pytest.raises(NetDefinitionError, match=r"\(type SPP\): pyramid level 2 \(4x4 bins\) on a 3x8 input"):
        layer(rand(1, 1, 3, 8))


def test_spp_net_sets_up_and_runs_forward_and_backward(make_net):
    net = make_net("""
    layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } shape { dim: 2 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
    layer { name: "spp" type: "SPP" bottom: "conv" top: "spp" spp_param { pyramid_height: 3 pool: MAX } }
    layer { name: "ip" type: "InnerProduct" bottom: "spp" top: "ip" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """, phase=pb.TRAIN, seed=1)
    assert net.blob_shapes["spp"] == (2, 84)
    for hw in [(9, 8), (7, 7)]:  # another input size: the same pyramid length, the same InnerProduct
        net.zero_grad()
        net(data=rand(2, 3, *hw, seed=hw[0]), label=torch.tensor([1.0, 3.0], dtype=torch.float64))
        assert tuple(net.blobs["spp"].shape) == (2, 84)
        torch.testing.assert_close(net.blobs["spp"], spp_reference(net.blobs["conv"].detach(), 3, "MAX"))
        net.loss.backward()
        conv = net.layer("conv")
        assert conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)


# --- Im2col -------------------------------------------------------------------------------------

def im2col_reference(x, kernel, pad, stride, dilation, axis=1):
    """Transcription of Caffe's im2col_nd_cpu (every image of the axes before `axis` in turn): column
    channel c_col = c * prod(kernel) + row-major kernel offset; taps outside the image read 0."""
    import itertools

    x = x.numpy()
    outer, C, spatial = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    n = len(spatial)
    out = [int((spatial[i] + 2 * pad[i] - (dilation[i] * (kernel[i] - 1) + 1)) / stride[i]) + 1 for i in range(n)]
    ksize = math.prod(kernel)
    imgs = x.reshape(-1, C, *spatial)
    y = np.zeros((imgs.shape[0], C * ksize, *out))
    for b in range(imgs.shape[0]):
        for c_col in range(C * ksize):
            offset, d_offset = c_col, [0] * n
            for d in reversed(range(n)):
                if d < n - 1:
                    offset //= kernel[d + 1]
                d_offset[d] = offset % kernel[d]
            c_im = c_col // ksize
            for pos in itertools.product(*[range(o) for o in out]):
                idx = [pos[d] * stride[d] - pad[d] + d_offset[d] * dilation[d] for d in range(n)]
                if all(0 <= idx[d] < spatial[d] for d in range(n)):
                    y[(b, c_col, *pos)] = imgs[(b, c_im, *idx)]
    return torch.from_numpy(y.reshape(*outer, C * ksize, *out))


IM2COL_CASES = [
    # fields, input shape
    ("kernel_size: 3 stride: 2", (2, 3, 6, 5)),                           # Caffe's Im2colLayerTest blob
    ("kernel_size: 3 stride: 2 dilation: 3", (2, 3, 10, 9)),              # TestDilatedGradient
    ("kernel_h: 5 kernel_w: 3 stride: 2", (2, 3, 6, 5)),                  # TestRect
    ("kernel_size: 3 pad: 1 stride: 1", (1, 2, 4, 5)),
    ("kernel_size: 2 kernel_size: 3 pad: 2 pad: 0 stride: 3 stride: 1 dilation: 2 dilation: 1", (1, 2, 7, 6)),
    ("kernel_size: 3 pad_h: 1 stride: 2", (1, 2, 5, 5)),                  # pad_w defaults to 0 (Caffe)
    ("kernel_size: 3 stride: 2", (1, 2, 2, 5)),                           # shorter than the kernel: (2 - 3) / 2 -> 0
    ("kernel_size: 2 stride: 2 pad: 1", (2, 2, 3)),                       # 1-D
    ("kernel_size: 2 stride: 1 pad: 1 dilation: 2", (1, 2, 3, 4, 3)),     # 3-D
    ("axis: 2 kernel_size: 2 stride: 1", (2, 3, 2, 4, 4)),                # axes before the channel axis: images
    # pads and strides far past the input (padding the input itself ran out of memory or overflowed a size)
    ("kernel_size: 2 pad: 100000 stride: 100000", (1, 2, 7)),
    ("kernel_size: 3 pad: 1073741824 stride: 1073741824", (1, 2, 5, 4)),
    ("kernel_size: 3 pad: 1073741824 stride: 1073741824", (1, 2, 5, 4, 3)),
]


@pytest.mark.parametrize("force_nd", [False, True])
@pytest.mark.parametrize("fields,shape", IM2COL_CASES)
def test_im2col_against_caffe_loop(make_layer, fields, shape, force_nd):
    layer = make_layer(f'type: "Im2col" convolution_param {{ {fields} force_nd_im2col: {str(force_nd).lower()} }}',
                       shape)
    x = rand(*shape)
    y = layer(x)
    ref = im2col_reference(x, layer.kernel, layer.pad, layer.stride, layer.dilation, layer.axis)
    assert torch.equal(y, ref)
    assert [tuple(y.shape)] == layer.top_shapes([shape])
    small = rand(*((1,) + tuple(shape[1:])), seed=1).requires_grad_()
    assert gradcheck(layer, (small,))


def test_im2col_caffes_setup_and_top_left_blocks(make_layer):
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 dilation: 3 }', (2, 3, 10, 11))
    assert layer.top_shapes([(2, 3, 10, 11)]) == [(2, 27, 2, 3)]    # Caffe's TestSetup
    x = rand(2, 3, 6, 5)
    y = make_layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 }', (2, 3, 6, 5))(x)
    for c in range(27):                                               # TestForward
        assert y[0, c, 0, 0] == x[0, c // 9, (c // 3) % 3, c % 3]
    y = make_layer('type: "Im2col" convolution_param { kernel_h: 5 kernel_w: 3 stride: 2 }', (2, 3, 6, 5))(x)
    for c in range(45):                                               # TestRect
        assert y[0, c, 0, 0] == x[0, c // 15, (c // 3) % 5, c % 3]


def test_im2col_gradient_sums_overlapping_columns(make_layer):
    # kernel 2, stride 1 on a 1x3 row: the middle input is in two windows, so its gradient is 2 (col2im)
    layer = make_layer('type: "Im2col" convolution_param { kernel_h: 1 kernel_w: 2 }', (1, 1, 1, 3))
    x = rand(1, 1, 1, 3).requires_grad_()
    layer(x).sum().backward()
    assert x.grad.reshape(-1).tolist() == [1.0, 2.0, 1.0]


def test_im2col_times_weights_is_a_convolution(make_layer):
    fields = "kernel_size: 3 pad: 1 stride: 2 dilation: 2"
    x = rand(2, 3, 9, 8)
    cols = make_layer(f'type: "Im2col" convolution_param {{ {fields} }}', (2, 3, 9, 8))(x)
    conv = make_layer(f'type: "Convolution" convolution_param {{ num_output: 4 bias_term: false {fields} '
                      'weight_filler { type: "gaussian" std: 1 } }', (2, 3, 9, 8))
    y = torch.einsum("ok,nkhw->nohw", conv.weight.detach().reshape(4, -1), cols)
    torch.testing.assert_close(y, conv(x))


@pytest.mark.parametrize("fields,shape,msg", [
    ("", (1, 2, 5, 5), "kernel size must be specified and positive"),
    ("kernel_size: 3 stride: 0", (1, 2, 5, 5), "stride must be positive"),
    ("kernel_h: 3", (1, 2, 5, 5), "both kernel_h and kernel_w are required"),
    ("kernel_size: 2 kernel_size: 2 kernel_size: 2", (1, 2, 5, 5), "once per spatial axis"),
    ("axis: 3 kernel_size: 2", (1, 2, 5, 5), "no spatial axes"),
    ("kernel_size: 4 stride: 3", (1, 2, 5, 1), r"output size 0 along spatial axis 1 is not positive"),
])
def test_im2col_errors(make_layer, fields, shape, msg):
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type Im2col\): .*" + msg):
        make_layer(f'type: "Im2col" convolution_param {{ {fields} }}', shape)


def test_im2col_net_sets_up_and_runs_forward_and_backward(make_net):
    net = make_net("""
    force_backward: true
    layer { name: "in" type: "Input" top: "data" top: "target" input_param { shape { dim: 2 dim: 2 dim: 5 dim: 5 } shape { dim: 2 dim: 3 } } }
    layer { name: "cols" type: "Im2col" bottom: "data" top: "cols" convolution_param { kernel_size: 3 stride: 2 pad: 1 } }
    layer { name: "ip" type: "InnerProduct" bottom: "cols" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
    """, phase=pb.TRAIN, seed=1)
    assert net.blob_shapes["cols"] == (2, 18, 3, 3)
    x = rand(2, 2, 5, 5)
    net(data=x, target=rand(2, 3, seed=1))
    assert torch.equal(net.blobs["cols"], im2col_reference(x, (3, 3), (1, 1), (2, 2), (1, 1)))
    net.loss.backward()
    ip = net.layer("ip")
    # the InnerProduct's weight gradient is (d loss / d ip)^T @ cols, cols being Caffe's columns
    diff = (net.blobs["ip"] - rand(2, 3, seed=1)).detach() / 2
    torch.testing.assert_close(ip.weight.grad, diff.t() @ net.blobs["cols"].detach().reshape(2, -1))
