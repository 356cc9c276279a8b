"""sparse_conv2d: F.conv2d's values (stride 1) up to rounding, as a direct sum over the nonzero weights only: the
same bits for windows that agree where the kernel is nonzero, on any number of threads and any batch split."""
from __future__ import annotations

import pytest
import torch

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import noncontiguous

# (N, C, H, W, O, kH, kW, pad): LeNet's conv2 and conv1, paddings (also past the kernel), rectangular kernels and
# inputs, planes that are not a multiple of the op's 64-position block, one sample, a 1x1 kernel
SHAPES = [(64, 20, 12, 12, 50, 5, 5, (0, 0)), (8, 1, 28, 28, 20, 5, 5, (0, 0)), (7, 8, 9, 11, 6, 4, 6, (3, 1)),
          (1, 16, 10, 10, 5, 5, 5, (2, 2)), (5, 9, 6, 7, 3, 3, 3, (1, 0)), (3, 4, 5, 5, 2, 3, 3, (4, 5)),
          (2, 3, 13, 17, 4, 1, 1, (0, 0))]


def _inputs(shape, density=0.2, seed=0, bias=True):
    n, c, h, w, o, kh, kw, pad = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(o, c, kh, kw, generator=g) * (torch.rand(o, c, kh, kw, generator=g) < density)
    b = torch.randn(o, generator=g) if bias else None
    return x, wt, b, pad


def _close(got: torch.Tensor, x, w, b, pad):
    """Within float32 rounding of the exact (float64) convolution, relative to the output's scale."""
    want = ref.sparse_conv2d(x.double(), w.double(), None if b is None else b.double(), pad)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    scale = want.abs().max().item() + 1.0
    assert (got.double() - want).abs().max().item() <= 2e-5 * scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("bias", [True, False])
def test_values(shape, density, bias):
    x, w, b, pad = _inputs(shape, density, bias=bias)
    _close(ops.sparse_conv2d(x, w, b, pad), x, w, b, pad)


def test_windows_that_agree_under_the_kernel_give_the_same_bits():
    """The property the layer relies on (layers/vision.py, _FftConv): two windows with the same inputs wherever the
    kernel is nonzero give the same bits, whatever they hold under its zeros, so max pooling's exact ties fall
    as Caffe's direct sums make them fall."""
    x, w, b, pad = _inputs(SHAPES[0], seed=1)
    w[:, :, :, 2:] = 0  # only kernel columns 0 and 1 are kept
    x[:, :, :, 7:9] = x[:, :, :, 2:4]  # windows 2 and 7 agree on their columns 0-1, not on 2-4
    assert not torch.equal(x[:, :, :, 4:7], x[:, :, :, 9:12])
    y = ops.sparse_conv2d(x, w, b, pad)
    assert torch.equal(y[:, :, :, 7], y[:, :, :, 2])
    x[:, :, :, :2] = 0  # windows over zeros only: exactly the bias
    y = ops.sparse_conv2d(x, w, b, pad)
    assert torch.equal(y[:, :, :, 0], b.view(1, -1, 1).expand(x.shape[0], -1, y.shape[2]))


def test_noncontiguous_and_views():
    x, w, b, pad = _inputs(SHAPES[0])
    want = ops.sparse_conv2d(x, w, b, pad)
    assert torch.equal(ops.sparse_conv2d(noncontiguous(x), noncontiguous(w), noncontiguous(b), pad), want)
    xt = x.transpose(0, 1)  # (20, 64, 12, 12), a view
    wt = w[:3].reshape(3, 20, 5, 5).repeat(1, 4, 1, 1)[:, :64].transpose(2, 3)
    _close(ops.sparse_conv2d(xt, wt, None, (1, 1)), xt, wt, None, (1, 1))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_same_bits_on_any_thread_count_and_batch_split(shape):
    x, w, b, pad = _inputs(shape, seed=2)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(ops.sparse_conv2d(x, w, b, pad))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    n = x.shape[0]
    for lo, hi in ((0, 1), (1, n), (n // 2, n)):
        if hi > lo:
            assert torch.equal(ops.sparse_conv2d(x[lo:hi], w, b, pad), outs[0][lo:hi])


def test_all_zero_kernel_and_skipped_products():
    """All weights zero: the bias everywhere (0 without one). A zero weight's products are skipped: an infinite
    input under it does not make the output NaN (a dense convolution gives NaN there), one under a kept weight
    does spread as usual."""
    x, w, b, pad = _inputs(SHAPES[0], seed=3)
    y0 = ops.sparse_conv2d(x, torch.zeros_like(w), b, pad)
    assert torch.equal(y0, b.view(1, -1, 1, 1).expand_as(y0))
    assert torch.equal(ops.sparse_conv2d(x, torch.zeros_like(w), None, pad), torch.zeros_like(y0))
    w = torch.zeros_like(w)
    w[:, :, 0, 0] = 1.0
    x[0, :, 0, 1] = float("inf")  # under the zero weight (0, 1) of window (0, 0), under (0, 0) of window (0, 1)
    y = ops.sparse_conv2d(x, w, b, pad)
    assert torch.isfinite(y[0, :, 0, 0]).all() and torch.isinf(y[0, :, 0, 1]).all()


def test_empty_batch_meta_and_opcheck():
    x, w, b, pad = _inputs(SHAPES[2])
    assert ops.sparse_conv2d(x[:0], w, b, pad).shape == (0, 6, 12, 8)
    y = ops.sparse_conv2d(x.to("meta"), w.to("meta"), b.to("meta"), (2, 1))
    assert y.shape == (7, 6, 10, 8) and y.device.type == "meta"
    torch.library.opcheck(torch.ops.netcompress.sparse_conv2d.default, (x, w, b, list(pad)))
    torch.library.opcheck(torch.ops.netcompress.sparse_conv2d.default, (x, w, None, [0, 0]))


@pytest.mark.parametrize("args, message", [
    (dict(pad=(-1, 0)), "two values >= 0"),
    (dict(dtype=torch.float64), "float32 only"),
    (dict(channels=3), "channels, weight expects"),
    (dict(bias=7), "bias must have 50 elements"),
    (dict(size=3), "larger than the padded input"),
    (dict(dims=3), "must be 4-D"),
])
def test_bad_arguments(args, message):
    x, w, b, pad = _inputs(SHAPES[0])
    if "dtype" in args:
        x, w, b = x.to(args["dtype"]), w.to(args["dtype"]), b.to(args["dtype"])
    if "channels" in args:
        x = x[:, :args["channels"]]
    if "bias" in args:
        b = b[:args["bias"]]
    if "size" in args:
        x = x[:, :, :args["size"], :args["size"]]
    if "dims" in args:
        x = x[0]
    with pytest.raises(RuntimeError, match=message):
        ops.sparse_conv2d(x, w, b, args.get("pad", pad))


# ---- sparse_conv2d_input: the data gradient ----

def _grad_inputs(shape, density=0.2, seed=0):
    x, w, _, pad = _inputs(shape, density, seed=seed, bias=False)
    out = torch.nn.functional.conv2d(x, w, padding=pad)
    gy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 100))
    return x, w, gy, pad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_input_gradient_values(shape, density):
    x, w, gy, pad = _grad_inputs(shape, density)
    got = ops.sparse_conv2d_input(gy, w, x.shape[2:], pad)
    want = ref.sparse_conv2d_input(gy.double(), w.double(), x.shape[2:], pad)
    assert got.dtype == torch.float32 and got.shape == x.shape and got.is_contiguous()
    assert (got.double() - want).abs().max().item() <= 2e-5 * (want.abs().max().item() + 1.0)
    if density == 0.0:
        assert torch.equal(got, torch.zeros_like(x))


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_input_gradient_same_bits_on_any_thread_count_and_batch_split(shape):
    x, w, gy, pad = _grad_inputs(shape, seed=5)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(ops.sparse_conv2d_input(gy, w, x.shape[2:], pad))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    n = x.shape[0]
    for lo, hi in ((0, 1), (n // 2, n)):
        if hi > lo:
            assert torch.equal(ops.sparse_conv2d_input(gy[lo:hi], w, x.shape[2:], pad), outs[0][lo:hi])
    assert torch.equal(ops.sparse_conv2d_input(noncontiguous(gy), noncontiguous(w), x.shape[2:], pad), outs[0])


def test_input_gradient_empty_meta_and_opcheck():
    x, w, gy, pad = _grad_inputs(SHAPES[2])
    assert ops.sparse_conv2d_input(gy[:0], w, x.shape[2:], pad).shape == (0, *x.shape[1:])
    y = ops.sparse_conv2d_input(gy.to("meta"), w.to("meta"), x.shape[2:], pad)
    assert y.shape == x.shape and y.device.type == "meta"
    torch.library.opcheck(torch.ops.netcompress.sparse_conv2d_input.default, (gy, w, list(x.shape[2:]), list(pad)))


@pytest.mark.parametrize("args, message", [
    (dict(pad=(-1, 0)), "two values >= 0"),
    (dict(size=(12, 0)), "two values > 0"),
    (dict(size=(13, 12)), "is not the output of a"),
    (dict(outs=49), "is not the output of a"),
    (dict(dtype=torch.float64), "float32 only"),
    (dict(dims=3), "must be 4-D"),
])
def test_input_gradient_bad_arguments(args, message):
    x, w, gy, pad = _grad_inputs(SHAPES[0])
    size = args.get("size", x.shape[2:])
    if "dtype" in args:
        gy, w = gy.to(args["dtype"]), w.to(args["dtype"])
    if "outs" in args:
        w = w[:args["outs"]]
    if "dims" in args:
        gy = gy[0]
    with pytest.raises(RuntimeError, match=message):
        ops.sparse_conv2d_input(gy, w, size, args.get("pad", pad))


# ---- direct_conv2d_weight: the weight and bias gradients ----

@pytest.mark.parametrize("shape", SHAPES)
def test_weight_gradient_values(shape):
    x, w, gy, pad = _grad_inputs(shape, 1.0, seed=7)
    gw, gb = ops.direct_conv2d_weight(x, gy, w.shape[2:], pad)
    want_w, want_b = ref.direct_conv2d_weight(x.double(), gy.double(), w.shape[2:], pad)
    assert gw.dtype == torch.float32 and gw.shape == w.shape and gb.shape == (w.shape[0],)
    for got, want in ((gw, want_w), (gb, want_b)):
        assert (got.double() - want).abs().max().item() <= 2e-5 * (want.abs().max().item() + 1.0)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_weight_gradient_same_bits_on_any_thread_count(shape):
    """The batch's sums are added in fixed groups of samples, in order: the same bits on 1, 2 or 3 threads (oneDNN's
    weight gradient, which this replaces for single-channel inputs, varies with the thread count)."""
    x, w, gy, pad = _grad_inputs(shape, 1.0, seed=8)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(ops.direct_conv2d_weight(x, gy, w.shape[2:], pad))
    finally:
        torch.set_num_threads(old)
    for gw, gb in outs[1:]:
        assert torch.equal(gw, outs[0][0]) and torch.equal(gb, outs[0][1])
    gw, gb = ops.direct_conv2d_weight(noncontiguous(x), noncontiguous(gy), w.shape[2:], pad)
    assert torch.equal(gw, outs[0][0]) and torch.equal(gb, outs[0][1])


def test_weight_gradient_empty_meta_and_opcheck():
    x, w, gy, pad = _grad_inputs(SHAPES[2], 1.0)
    gw, gb = ops.direct_conv2d_weight(x[:0], gy[:0], w.shape[2:], pad)
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros(w.shape[0]))
    gw, gb = ops.direct_conv2d_weight(x.to("meta"), gy.to("meta"), w.shape[2:], pad)
    assert gw.shape == w.shape and gb.shape == (w.shape[0],) and gw.device.type == "meta"
    torch.library.opcheck(torch.ops.netcompress.direct_conv2d_weight.default, (x, gy, list(w.shape[2:]), list(pad)))


@pytest.mark.parametrize("args, message", [
    (dict(pad=(-1, 0)), "two values >= 0"),
    (dict(kernel=(5, 0)), "two values > 0"),
    (dict(kernel=(4, 5)), "is not the output of x"),
    (dict(batch=3), "is not the output of x"),
    (dict(dtype=torch.float64), "float32 only"),
    (dict(dims=3), "must be 4-D"),
])
def test_weight_gradient_bad_arguments(args, message):
    x, w, gy, pad = _grad_inputs(SHAPES[0], 1.0)
    if "dtype" in args:
        x, gy = x.to(args["dtype"]), gy.to(args["dtype"])
    if "batch" in args:
        gy = gy[:args["batch"]]
    if "dims" in args:
        x = x[0]
    with pytest.raises(RuntimeError, match=message):
        ops.direct_conv2d_weight(x, gy, args.get("kernel", w.shape[2:]), args.get("pad", pad))


# ---- the documented summation orders, on every vector path ----
#
# The ops' loops are compiled once per instruction set (AVX-512, AVX2, the x86-64 baseline) and pick one per call;
# NETCOMPRESS_SIMD caps the choice. Every path must give the bits of the order the kernel file documents, emulated
# here one float32 operation at a time (torch's element-wise mul and add round as the C loops do, with no fused
# multiply-add).

SIMD_PATHS = ["", "avx2", "baseline"]  # "": the widest the CPU has
# (N, C, H, W, O, kH, kW, pad): two sample groups of the weight gradient (N > 8) with a short last one, planes
# with a tail past the last multiple of 16, output channels and taps that leave partial tiles (7 x 9, 6 x 8, 5 x 25)
ORDER_SHAPES = [(5, 2, 7, 9, 6, 3, 3, (1, 1)), (10, 1, 10, 10, 7, 5, 5, (0, 0)), (3, 3, 6, 5, 5, 2, 4, (1, 2)),
                (9, 1, 12, 12, 20, 5, 5, (0, 0))]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _padded(x, pad):
    return torch.nn.functional.pad(x, (pad[1], pad[1], pad[0], pad[0]))


def _forward_in_order(x, w, b, pad):
    """out = (the products of the nonzero weights in (channel, row, column) order, added from 0) + bias."""
    xp = _padded(x, pad)
    o, c, kh, kw = w.shape
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = torch.empty(x.shape[0], o, oh, ow)
    for oc in range(o):
        acc = torch.zeros(x.shape[0], oh, ow)
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    if w[oc, ci, i, j] != 0:
                        acc = acc + w[oc, ci, i, j] * xp[:, ci, i:i + oh, j:j + ow]
        out[:, oc] = acc + (b[oc] if b is not None else 0.0)
    return out


def _weight_gradient_in_order(x, gy, kernel, pad):
    """Per group of 8 samples: 16 lane sums over the samples and the positions below the last multiple of 16, the
    lanes added in order from 0, then the positions past it; the groups added in order from 0. The bias: the same
    with inputs of 1."""
    n, c = x.shape[:2]
    o, oh, ow = gy.shape[1:]
    kh, kw = kernel
    plane = oh * ow
    body = plane - plane % 16
    xp = _padded(x, pad)
    cols = [xp[:, ci, i:i + oh, j:j + ow].reshape(n, plane) for ci in range(c) for i in range(kh) for j in range(kw)]
    cols = torch.stack(cols + [torch.ones(n, plane)], dim=1)  # (n, taps + 1, plane)
    g = gy.reshape(n, o, plane)
    total = torch.zeros(o, cols.shape[1])
    for first in range(0, n, 8):
        group = range(first, min(first + 8, n))
        lanes = torch.zeros(o, cols.shape[1], 16)
        for s in group:
            for p in range(0, body, 16):
                lanes = lanes + g[s, :, None, p:p + 16] * cols[s, None, :, p:p + 16]
        sums = torch.zeros(o, cols.shape[1])
        for lane in range(16):
            sums = sums + lanes[..., lane]
        for s in group:
            for p in range(body, plane):
                sums = sums + g[s, :, None, p] * cols[s, None, :, p]
        total = total + sums
    return total[:, :-1].reshape(o, c, kh, kw), total[:, -1]


def _input_gradient_in_order(gy, w, size, pad):
    """For each kernel position in (channel, column, row) order, the sum over its nonzero weights' output channels in
    order (from 0) added into the shifted layout; then each input position the sum over the kernel columns, in
    order, from 0."""
    n, o, oh, ow = gy.shape
    c, kh, kw = w.shape[1:]
    h, wd = size
    ph, pw = pad
    gxs = torch.zeros(n, c, kw, h + 2 * ph, ow)
    for ci in range(c):
        for j in range(kw):
            for i in range(kh):
                nonzero = [oc for oc in range(o) if w[oc, ci, i, j] != 0]
                if not nonzero:
                    continue
                acc = torch.zeros(n, oh, ow)
                for oc in nonzero:
                    acc = acc + w[oc, ci, i, j] * gy[:, oc]
                gxs[:, ci, j, i:i + oh] = gxs[:, ci, j, i:i + oh] + acc
    gx = torch.zeros(n, c, h, wd)
    for ci in range(c):
        for j in range(kw):
            lo = min(max(pw - j, 0), ow)
            hi = min(max(wd + pw - j, lo), ow)
            cols = slice(lo + j - pw, hi + j - pw)
            gx[:, ci, :, cols] = gx[:, ci, :, cols] + gxs[:, ci, j, ph:ph + h, lo:hi]
    return gx


@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("shape", ORDER_SHAPES)
def test_every_vector_path_sums_in_the_documented_order(shape, simd, monkeypatch):
    """The forward, the data gradient and the weight and bias gradients give, bit for bit, the sums in the order the
    kernel file documents, on the AVX-512, AVX2 and baseline paths alike (a path the CPU lacks runs the next one
    down): results do not depend on the machine, and tile shapes and vector widths are a matter of speed only."""
    monkeypatch.setenv("NETCOMPRESS_SIMD", simd)
    x, w, b, pad = _inputs(shape, 0.6, seed=11)
    assert torch.equal(_bits(ops.sparse_conv2d(x, w, b, pad)), _bits(_forward_in_order(x, w, b, pad)))
    assert torch.equal(_bits(ops.sparse_conv2d(x, w, None, pad)), _bits(_forward_in_order(x, w, None, pad)))
    _, _, gy, _ = _grad_inputs(shape, 0.6, seed=11)
    assert torch.equal(_bits(ops.sparse_conv2d_input(gy, w, x.shape[2:], pad)),
                       _bits(_input_gradient_in_order(gy, w, x.shape[2:], pad)))
    gw, gb = ops.direct_conv2d_weight(x, gy, w.shape[2:], pad)
    want_w, want_b = _weight_gradient_in_order(x, gy, w.shape[2:], pad)
    assert torch.equal(_bits(gw), _bits(want_w)) and torch.equal(_bits(gb), _bits(want_b))


@pytest.mark.parametrize("value", ["avx3", "AVX2", "sse2"])
def test_a_bad_simd_setting_is_an_error_naming_the_variable(value, monkeypatch):
    monkeypatch.setenv("NETCOMPRESS_SIMD", value)
    x, w, b, pad = _inputs(SHAPES[1])
    with pytest.raises(RuntimeError, match=f"NETCOMPRESS_SIMD must be avx512, avx2 or baseline.*got '{value}'"):
        ops.sparse_conv2d(x, w, b, pad)
    monkeypatch.setenv("NETCOMPRESS_SIMD", "avx512")  # no cap: the widest path the CPU has
    assert torch.equal(ops.sparse_conv2d(x, w, b, pad), _forward_in_order(x, w, b, pad))


def test_direct_sum_simd_names_the_path_and_honours_the_cap(monkeypatch):
    """ops.direct_sum_simd() says which vector path the ops take now (netcompress info prints it): the widest the
    CPU has, capped by NETCOMPRESS_SIMD, never wider than the cap."""
    monkeypatch.delenv("NETCOMPRESS_SIMD", raising=False)
    order = ["baseline", "avx2", "avx512"]
    best = ops.direct_sum_simd()
    assert best in order
    for cap in order:
        monkeypatch.setenv("NETCOMPRESS_SIMD", cap)
        assert ops.direct_sum_simd() == order[min(order.index(cap), order.index(best))]
    monkeypatch.setenv("NETCOMPRESS_SIMD", "avx3")
    with pytest.raises(RuntimeError, match="NETCOMPRESS_SIMD must be avx512, avx2 or baseline"):
        ops.direct_sum_simd()
