"""max_pool2d: the layers' MAX pooling, which must equal PyTorch's max_pool2d_with_indices exactly."""
from __future__ import annotations

import math

import pytest
import torch

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import noncontiguous

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# shape, kernel, stride, padding, ceil_mode: LeNet, CIFAR-10 and AlexNet pools, padded and ragged geometries
GEOMETRIES = [
    ((2, 3, 24, 24), (2, 2), (2, 2), (0, 0), True),
    ((2, 3, 32, 32), (3, 3), (2, 2), (0, 0), True),
    ((1, 4, 55, 55), (3, 3), (2, 2), (0, 0), True),
    ((2, 3, 7, 9), (3, 3), (2, 2), (1, 1), True),
    ((2, 3, 10, 10), (3, 3), (2, 2), (0, 0), False),
    ((1, 1, 5, 5), (2, 2), (3, 3), (1, 1), True),
    ((2, 2, 6, 7), (3, 2), (2, 1), (1, 0), True),
    ((1, 2, 13, 300), (3, 3), (1, 1), (1, 1), True),
    ((1, 2, 9, 601), (3, 3), (2, 2), (1, 1), False),
    ((1, 2, 9, 20), (2, 4), (3, 3), (1, 2), True),
    ((3, 11, 11), (5, 5), (1, 1), (2, 2), False),  # 3-D input
    # the 2x2 stride-2 path (every window inside): odd sizes in floor mode, short and long rows, 3-D
    ((2, 3, 9, 11), (2, 2), (2, 2), (0, 0), False),
    ((3, 5, 8, 8), (2, 2), (2, 2), (0, 0), True),
    ((1, 2, 6, 70), (2, 2), (2, 2), (0, 0), False),
    ((4, 10, 10), (2, 2), (2, 2), (0, 0), True),
]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[0])) + f"-k{g[1][0]}s{g[2][0]}")
def test_max_pool_matches_pytorch(dtype, geometry, gen):
    shape, k, s, p, ceil = geometry
    x = torch.randint(-3, 4, shape, generator=gen).to(dtype)  # many ties: the first maximum must win
    flat = x.view(-1)
    flat[::17] = math.nan
    flat[::23] = -math.inf
    y, ind = ops.max_pool2d(x, k, s, p, ceil)
    y_ref, ind_ref = ref.max_pool2d(x, k, s, p, ceil)
    assert ind.dtype == torch.int64 and torch.equal(ind, ind_ref)
    assert y.dtype == dtype and _same(y, y_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_every_small_geometry(dtype, gen):
    # Inputs of 1-6 rows and columns under kernels up to 5, strides up to 3, paddings up to 2, both modes: a
    # kernel taller or wider than the input read the next plane (row 0 was taken for an interior row when
    # H - kh + ph < 0: C++'s division truncates towards zero), with indices outside the plane.
    checked = 0
    for h in range(1, 7):
        for w in range(1, 7):
            for k in range(1, 6):
                for st in range(1, 4):
                    for p in range(0, k // 2 + 1):
                        for ceil in (False, True):
                            x = torch.randint(-3, 4, (2, 2, h, w), generator=gen).to(dtype)
                            try:
                                y_ref, ind_ref = ref.max_pool2d(x, (k, k), (st, st), (p, p), ceil)
                            except RuntimeError:
                                continue  # an empty output (ATen refuses it, as the op does)
                            y, ind = ops.max_pool2d(x, (k, k), (st, st), (p, p), ceil)
                            assert torch.equal(ind, ind_ref) and _same(y, y_ref), (h, w, k, st, p, ceil)
                            checked += 1
    assert checked > 1500


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_2x2_every_window(dtype):
    """Every 2x2 window over {-inf, -0.0, 0, 1, NaN}: ties, signed zeros, NaNs in every position (the 2x2 stride-2
    path compares the row pairs first, then their winners, which must pick what row-major order picks)."""
    import itertools
    values = [-math.inf, -0.0, 0.0, 1.0, math.nan]
    windows = torch.tensor(list(itertools.product(values, repeat=4)), dtype=dtype)  # (625, 4)

    def grid(cols: int) -> torch.Tensor:
        """All windows in one plane, `cols` windows a row (the last row filled with the first windows)."""
        rows = -(-len(windows) // cols)
        w = torch.cat([windows, windows[:rows * cols - len(windows)]]).view(rows, cols, 2, 2)
        return w.permute(0, 2, 1, 3).reshape(1, 1, 2 * rows, 2 * cols)

    # one window per plane; 3x3 windows per plane; rows of 12 (8 + 4 outputs), 15 (8 + 4 + 3) and 625 windows, so
    # that every window meets the vector loops' lanes and the scalar tail
    layouts = [windows.view(1, -1, 2, 2),
               windows.view(25, 5, 5, 2, 2)[:, :3, :3].permute(0, 1, 3, 2, 4).reshape(1, 25, 6, 6),
               grid(12), grid(15), grid(625)]
    for xi in layouts:
        y, ind = ops.max_pool2d(xi, (2, 2), (2, 2), (0, 0), False)
        y_ref, ind_ref = ref.max_pool2d(xi, (2, 2), (2, 2), (0, 0), False)
        assert torch.equal(ind, ind_ref) and _same(y, y_ref)
        assert bool((((y == y_ref) & (torch.signbit(y) == torch.signbit(y_ref))) | torch.isnan(y_ref)).all())


@pytest.mark.parametrize("layout", ["noncontiguous", "random"])
def test_max_pool_layouts(layout, gen):
    x = torch.randn(4, 5, 16, 16, generator=gen)
    if layout == "noncontiguous":
        x = noncontiguous(x)
    y, ind = ops.max_pool2d(x, (3, 3), (2, 2), (1, 1), True)
    y_ref, ind_ref = ref.max_pool2d(x, (3, 3), (2, 2), (1, 1), True)
    assert torch.equal(y, y_ref) and torch.equal(ind, ind_ref)


def test_max_pool_gradient_is_pytorchs(gen):
    x = torch.randint(-2, 3, (3, 4, 13, 13), generator=gen).double().requires_grad_()
    g = torch.randn(3, 4, 7, 7, generator=gen, dtype=torch.float64)
    ops.max_pool2d(x, (3, 3), (2, 2), (1, 1), True)[0].backward(g)
    ours, x.grad = x.grad, None
    ref.max_pool2d(x, (3, 3), (2, 2), (1, 1), True)[0].backward(g)
    assert torch.equal(ours, x.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_max_pool_backward_is_atens(dtype, threads, gen):
    """The gradient op equals aten::max_pool2d_with_indices_backward bit for bit (the CPU's own loop for float and
    double, which zeroes inside the scatter): every geometry, overlapping windows (their sums in ATen's order),
    -0.0 and NaN gradients, -1 indices (a window of padding only, skipped), an index in another window (the
    2x2 stride-2 path, which writes each window's four elements directly, must then fall back to the scatter)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape, k, s, p, ceil in GEOMETRIES:
            x = torch.randint(-2, 3, shape, generator=gen).to(dtype)
            _, ind = ops.max_pool2d(x, k, s, p, ceil)
            g = torch.randn(ind.shape, generator=gen).to(dtype)
            g.view(-1)[::5] = -0.0
            g.view(-1)[::7] = math.nan
            # The last output pointing at its neighbour's element: an index outside its own window (two terms
            # on one element), found after the 2x2 path has written every other window.
            late = ind.clone()
            late.view(-1)[-1] = ind.view(-1)[-2]
            for indices in (ind, torch.where(torch.rand(ind.shape, generator=gen) < 0.3, -1, ind), late):
                ours = torch.ops.netcompress._max_pool2d_backward(g, x, indices, list(k), list(s), list(p), ceil)
                want = torch.ops.aten.max_pool2d_with_indices_backward(g, x, list(k), list(s), list(p), [1, 1],
                                                                       ceil, indices)
                assert ours.dtype == dtype and _same(ours, want), (shape, k, s, p, ceil)
                assert torch.equal(torch.signbit(ours), torch.signbit(want))
    finally:
        torch.set_num_threads(before)


def test_max_pool_backward_rejects_foreign_indices():
    """An index outside its plane is an error (ATen's CPU kernel would write out of bounds)."""
    x = torch.randn(2, 3, 8, 8)
    _, ind = ops.max_pool2d(x, (2, 2), (2, 2), (0, 0), False)
    for bad in (64, -2, 10 ** 9):
        wrong = ind.clone()
        wrong.view(-1)[5] = bad
        with pytest.raises(RuntimeError, match=r"max_pool2d backward: an index lies outside its 8×8 plane"):
            torch.ops.netcompress._max_pool2d_backward(torch.ones(2, 3, 4, 4), x, wrong, [2, 2], [2, 2], [0, 0],
                                                       False)


def test_max_pool_backward_has_no_zeroing_pass():
    """LeNet's pool backward: no zero gradient made for the int64 indices (the autograd node does not
    materialize it) and no separate zeroing pass over the input gradient (done inside the scatter)."""
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(8, 20, 24, 24, requires_grad=True)
    y, _ = ops.max_pool2d(x, (2, 2), (2, 2), (0, 0), False)
    g = torch.randn(y.shape)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y.backward(g)
    names = [e.name for e in prof.events()]
    assert "netcompress::_max_pool2d_backward" in names
    assert not {"aten::zeros", "aten::zero_", "aten::fill_"} & set(names), sorted(set(names))
    assert torch.equal(x.grad, torch.ops.aten.max_pool2d_with_indices_backward(
        g, x.detach(), [2, 2], [2, 2], [0, 0], [1, 1], False, ops.max_pool2d(x.detach(), (2, 2), (2, 2), (0, 0),
                                                                            False)[1]))


def test_max_pool_errors():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="max_pool2d: padding must be at least 0 and at most half the kernel"):
        ops.max_pool2d(x, (2, 2), (2, 2), (2, 2), True)
    with pytest.raises(RuntimeError, match=r"max_pool2d: input must be 3-D \(C, H, W\) or 4-D"):
        ops.max_pool2d(torch.zeros(4, 4), (2, 2), (2, 2), (0, 0), True)
    with pytest.raises(RuntimeError, match="max_pool2d: kernel_size and stride must be positive"):
        ops.max_pool2d(x, (0, 2), (2, 2), (0, 0), True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_opcheck(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=g, dtype=dtype, requires_grad=True)
    torch.library.opcheck(torch.ops.netcompress.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True))
    torch.library.opcheck(torch.ops.netcompress.max_pool2d.default, (x, [2, 2], [2, 2], [0, 0], False))
    _, ind = ops.max_pool2d(x.detach(), (3, 3), (2, 2), (1, 1), True)
    g = torch.randn(ind.shape, generator=g, dtype=dtype)
    torch.library.opcheck(torch.ops.netcompress._max_pool2d_backward.default,
                          (g, x.detach(), ind, [3, 3], [2, 2], [1, 1], True))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_cuda_is_atens(dtype, gen):
    x = torch.randn(2, 3, 32, 32, generator=gen).to(dtype)
    y, ind = ops.max_pool2d(x.cuda(), (3, 3), (2, 2), (0, 0), True)
    y_cpu, ind_cpu = ops.max_pool2d(x, (3, 3), (2, 2), (0, 0), True)
    assert torch.equal(y.cpu(), y_cpu) and torch.equal(ind.cpu(), ind_cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_backward_cuda_equals_cpu(dtype, gen):
    """ATen's CUDA gradient and the CPU's loop agree bit for bit (each input gets at most one window here)."""
    x = torch.randn(4, 5, 24, 24, generator=gen).to(dtype)
    _, ind = ops.max_pool2d(x, (2, 2), (2, 2), (0, 0), False)
    g = torch.randn(ind.shape, generator=gen).to(dtype)
    cpu = torch.ops.netcompress._max_pool2d_backward(g, x, ind, [2, 2], [2, 2], [0, 0], False)
    cuda = torch.ops.netcompress._max_pool2d_backward(g.cuda(), x.cuda(), ind.cuda(), [2, 2], [2, 2], [0, 0], False)
    assert torch.equal(cuda.cpu(), cpu)
