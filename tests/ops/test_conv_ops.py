"""nnpack_conv2d: F.conv2d's values (stride 1) up to rounding, the same bits on any number of threads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import noncontiguous

pytestmark = pytest.mark.skipif(not ops.nnpack_available(), reason="this PyTorch has no NNPACK for this CPU")

# (N, C, H, W, O, kH, kW, pad): LeNet's conv2 and its two gradient convolutions, paddings up to kernel - 1,
# rectangular kernels and inputs, one sample, odd batches, a single channel
SHAPES = [(64, 20, 12, 12, 50, 5, 5, (0, 0)), (64, 50, 8, 8, 20, 5, 5, (4, 4)), (20, 64, 12, 12, 50, 8, 8, (0, 0)),
          (7, 8, 9, 11, 6, 4, 6, (3, 1)), (1, 16, 10, 10, 5, 5, 5, (2, 2)), (3, 1, 8, 8, 4, 5, 5, (0, 0)),
          (5, 9, 6, 7, 3, 3, 3, (1, 0))]


def _inputs(shape, seed=0, bias=True):
    n, c, h, w, o, kh, kw, pad = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(o, c, kh, kw, generator=g)
    b = torch.randn(o, generator=g) if bias else None
    return x, wt, b, pad


def _close(got: torch.Tensor, x, w, b, pad):
    """Within float32 rounding of the exact (float64) convolution, relative to the output's scale."""
    want = ref.nnpack_conv2d(x.double(), w.double(), None if b is None else b.double(), pad)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    scale = want.abs().max().item() + 1.0
    assert (got.double() - want).abs().max().item() <= 2e-5 * scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_values(shape, bias):
    x, w, b, pad = _inputs(shape, bias=bias)
    _close(ops.nnpack_conv2d(x, w, b, pad), x, w, b, pad)


def test_noncontiguous_and_views():
    x, w, b, pad = _inputs(SHAPES[0])
    want = ops.nnpack_conv2d(x, w, b, pad)
    assert torch.equal(ops.nnpack_conv2d(noncontiguous(x), noncontiguous(w), b, pad), want)
    # a transposed view, as the layer's weight gradient passes (the op copies it)
    _close(ops.nnpack_conv2d(x.transpose(0, 1), x.transpose(0, 1)[:3, :, :5, :5], None, (0, 0)),
           x.transpose(0, 1), x.transpose(0, 1)[:3, :, :5, :5], None, (0, 0))


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_same_bits_on_any_thread_count_and_batch_split(shape):
    """The op splits the batch over the threads: each sample's result does not depend on the split, so the
    values are the same on 1, 2 or 3 threads and for any slice of the batch."""
    x, w, b, pad = _inputs(shape, seed=1)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(ops.nnpack_conv2d(x, w, b, pad))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    n = x.shape[0]
    for lo, hi in ((0, 1), (1, n), (n // 2, n)):
        if hi > lo:
            assert torch.equal(ops.nnpack_conv2d(x[lo:hi], w, b, pad), outs[0][lo:hi])


def test_empty_batch_and_meta():
    x, w, b, pad = _inputs(SHAPES[0])
    assert ops.nnpack_conv2d(x[:0], w, b, pad).shape == (0, 50, 8, 8)
    y = ops.nnpack_conv2d(x.to("meta"), w.to("meta"), b.to("meta"), (2, 1))
    assert y.shape == (64, 50, 12, 10) and y.device.type == "meta"


@pytest.mark.parametrize("args, message", [
    (dict(pad=(5, 0)), "below the kernel size"),
    (dict(pad=(-1, 0)), "below the kernel size"),
    (dict(dtype=torch.float64), "float32 only"),
    (dict(channels=3), "channels, weight expects"),
    (dict(bias=7), "bias must have 50 elements"),
    (dict(size=3), "larger than the padded input"),
    (dict(kernel=17), "at most 16x16"),
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
    if "kernel" in args:
        x, w = torch.randn(2, 20, 20, 20), torch.randn(50, 20, args["kernel"], args["kernel"])
    with pytest.raises(RuntimeError, match=message):
        ops.nnpack_conv2d(x, w, b, args.get("pad", pad))


def test_gradient_convolutions_match_aten():
    """The layer's gradient formulas (layers/vision.py, _FftConv) as convolutions of the op: the data gradient
    with the kernel flipped and transposed, the weight gradient with the batch and channel axes swapped."""
    x, w, b, pad = _inputs((16, 20, 12, 12, 50, 5, 5, (1, 2)), seed=2)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    y = F.conv2d(xd, wd, padding=pad)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y.backward(gy)
    gyf = gy.float()
    gx = ops.nnpack_conv2d(gyf, w.flip(2, 3).transpose(0, 1), None, (4 - pad[0], 4 - pad[1]))
    gw = ops.nnpack_conv2d(x.transpose(0, 1), gyf.transpose(0, 1), None, pad).transpose(0, 1)
    for got, want in ((gx, xd.grad), (gw, wd.grad)):
        assert got.shape == want.shape
        assert (got.double() - want).abs().max().item() <= 2e-5 * (want.abs().max().item() + 1.0)


@pytest.mark.parametrize("bias", [True, False])
def test_all_zero_kernels_give_their_bias_exactly(bias):
    """An output channel whose kernel is all zeros (a channel DNS pruned whole) is its bias exactly, as a direct
    sum of zero products is, and the other channels are what the op gives without it; all channels zero: the
    bias everywhere."""
    x, w, b, pad = _inputs(SHAPES[0], seed=4, bias=bias)
    dead = [0, 7, 49]
    w[dead] = 0
    y = ops.nnpack_conv2d(x, w, b, pad)
    want = torch.zeros(()) if b is None else b[dead].view(1, -1, 1, 1)
    assert torch.equal(y[:, dead], want.expand(y.shape[0], len(dead), *y.shape[2:]))
    live = [c for c in range(w.shape[0]) if c not in dead]
    assert torch.equal(y[:, live], ops.nnpack_conv2d(x, w[live], None if b is None else b[live], pad))
    _close(y, x, w, b, pad)
    y0 = ops.nnpack_conv2d(x, torch.zeros_like(w), b, pad)
    assert torch.equal(y0, torch.zeros_like(y0) if b is None else b.view(1, -1, 1, 1).expand_as(y0))


def test_first_call_keeps_the_thread_count():
    """The op's first call in a process makes NNPACK's pool with one thread by setting ATen's thread count to 1
    around a tiny NNPACK call: afterwards torch's thread count is what it was, and the op splits its batch over
    those threads with the same values as on one (a fresh process, so that the first call is the op's)."""
    import subprocess
    import sys
    code = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from netcompress import ops\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, w = torch.randn(6, 8, 12, 12, generator=g), torch.randn(4, 8, 5, 5, generator=g)\n"
        "y2 = ops.nnpack_conv2d(x, w, None, (0, 0))\n"
        "assert torch.get_num_threads() == 2, torch.get_num_threads()\n"
        "torch.set_num_threads(1)\n"
        "assert torch.equal(ops.nnpack_conv2d(x, w, None, (0, 0)), y2)\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_same_bits_as_atens_nnpack_entry(shape, bias):
    """The op calls NNPACK itself (its own workspaces) with the algorithm ATen's `_nnpack_spatial_convolution`
    asks for, sample by sample for one sample as ATen does: on one thread the same bits as ATen's entry."""
    x, w, b, pad = _inputs(shape, seed=2, bias=bias)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        got = ops.nnpack_conv2d(x, w, b, pad)
        want = torch._nnpack_spatial_convolution(x, w, b, pad)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got, want)


def test_many_shapes_in_turn():
    """A workspace per call shape, at most 16 per thread (the least recently used freed): 20 shapes called in
    turn, twice round, each result what the shape gives on its own."""
    shapes = [(2 + i % 3, 8 + i, 12, 12 + i % 4, 4 + i % 5, 5, 5, (i % 3, i % 2)) for i in range(20)]
    first = []
    for s in shapes:
        x, w, b, pad = _inputs(s, seed=3)
        first.append(ops.nnpack_conv2d(x, w, b, pad))
        _close(first[-1], x, w, b, pad)
    for s, want in zip(shapes, first):
        x, w, b, pad = _inputs(s, seed=3)
        assert torch.equal(ops.nnpack_conv2d(x, w, b, pad), want)


def test_concurrent_python_threads():
    """Workspaces are per thread: Python threads calling the op at once on different shapes get the results of
    calls made one at a time."""
    import threading
    cases = [_inputs(s, seed=4) for s in SHAPES[:4]]
    want = [ops.nnpack_conv2d(x, w, b, pad) for x, w, b, pad in cases]
    errors = []

    def work(i):
        x, w, b, pad = cases[i % len(cases)]
        for _ in range(5):
            if not torch.equal(ops.nnpack_conv2d(x, w, b, pad), want[i % len(cases)]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_calls_nnpack_directly_where_libtorch_exports_it():
    """ops.nnpack_calls() says "direct" exactly where libtorch exports NNPACK's two entry points (the op's own
    calls, with its workspaces; else ATen's entry), so a libtorch that stops exporting them shows in
    `netcompress info` and here rather than only as a slower step."""
    import ctypes
    import os
    import sys

    how = ops.nnpack_calls()
    assert how in ("direct", "aten")  # this module runs only where NNPACK is available
    if not sys.platform.startswith("linux"):
        assert how == "aten"
        return
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    exported = all(hasattr(lib, f) for f in ("nnp_convolution_output", "nnp_convolution_inference"))
    assert how == ("direct" if exported else "aten")
