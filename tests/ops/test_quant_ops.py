"""MicroNet quantizer ops (recipes-spec §4.5, §4.6, §5.2, T3): act_quant, int_quant, quant_weight(_codes),
quant_weight_fit, against hand-worked tables, an independent NumPy re-implementation and the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import noncontiguous, random_mask

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
_ops = torch.ops.netcompress


# ---- an independent NumPy version of §4.5 / §4.6 (float32 arithmetic as the source; rint = half to even) ------

def np_code(x: np.ndarray, alpha, lo, hi) -> np.ndarray:
    """clamp(round(x/α), lo, hi) in x's dtype; 0 where α == 0."""
    alpha = x.dtype.type(alpha)
    if alpha == 0:
        return np.zeros_like(x)
    return np.clip(np.rint(x / alpha), lo, hi).astype(x.dtype)


def np_act_quant(x: np.ndarray, alpha, lo, hi) -> np.ndarray:
    return (x.dtype.type(alpha) * np_code(x, alpha, lo, hi)).astype(x.dtype)


def np_ste(g: np.ndarray, x: np.ndarray, alpha, lo, hi) -> np.ndarray:
    alpha = x.dtype.type(alpha)
    r = np.zeros_like(x) if alpha == 0 else np.rint(x / alpha)
    return np.where((r >= lo) & (r <= hi), g, 0).astype(g.dtype)


def np_als(v: np.ndarray, bits: int, iters: int) -> np.ndarray:
    """§4.6 per row of v (rows, K), float32: α ← max|v|/clip, q, then `iters` times α ← ⟨v,q⟩/⟨q,q⟩ (float64
    dot products, α rounded to float32), q; ⟨q,q⟩ == 0 gives α = 0."""
    clip = 2 ** (bits - 1)
    out = []
    for row in v:
        a = np.float32(np.abs(row).max()) / np.float32(clip)
        q = np_code(row, a, -clip, clip - 1)
        for _ in range(iters):
            q64, v64 = q.astype(np.float64), row.astype(np.float64)
            den = float(np.dot(q64, q64))
            a = np.float32(float(np.dot(v64, q64)) / den) if den > 0 else np.float32(0)
            q = np_code(row, a, -clip, clip - 1)
        out.append(a)
    return np.array(out, dtype=np.float32)


# ---- ranges (§4.5) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits, calib_min, sign, expected", [
    (4, 0.0, "AUTO", (0, 15)),          # post-ReLU: unsigned 4-bit
    (4, 0.3, "AUTO", (0, 15)),
    (4, -0.5, "AUTO", (-16, 15)),       # min >= -1: one more bit
    (4, -1.0, "AUTO", (-16, 15)),       # -1 itself is not below -1
    (4, -1.5, "AUTO", (-8, 7)),         # min < -1: b bits
    (7, -0.5, "AUTO", (-128, 127)),     # min(8, b + 1) = 8
    (8, -0.5, "AUTO", (-128, 127)),     # capped at 8: b' = b
    (12, -0.5, "AUTO", (-128, 127)),    # the source's cap bites above 7 bits
    (12, -2.0, "AUTO", (-2048, 2047)),
    (4, 0.3, "SIGNED", (-16, 15)),
    (4, -3.0, "UNSIGNED", (0, 15)),
    (2, 0.0, "UNSIGNED", (0, 3)),
])
def test_act_quant_range(bits, calib_min, sign, expected):
    assert ops.act_quant_range(bits, calib_min, sign) == expected


def test_weight_quant_range():
    assert ops.weight_quant_range(4) == (-8, 7)
    assert ops.weight_quant_range(6) == (-32, 31)


# ---- act_quant -------------------------------------------------------------------------------------------

# α = 0.5, range [0, 15]: x/α, the code, y, and whether the STE passes the gradient.
ACT_TABLE = [
    # x,     y,    passes
    (0.0,    0.0,  1),
    (0.24,   0.0,  1),    # 0.48 -> 0
    (0.25,   0.0,  1),    # 0.5 -> 0 (half to even)
    (0.75,   1.0,  1),    # 1.5 -> 2
    (1.25,   1.0,  1),    # 2.5 -> 2
    (7.5,    7.5,  1),    # 15 -> 15
    (7.74,   7.5,  1),    # 15.48 -> 15: still inside
    (7.75,   7.5,  0),    # 15.5 -> 16: clamped, no gradient
    (100.0,  7.5,  0),
    (-0.25,  0.0,  1),    # -0.5 -> -0: inside
    (-0.26,  0.0,  0),    # -0.52 -> -1: clamped
    (-3.0,   0.0,  0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_act_quant_table(dtype):
    x = torch.tensor([r[0] for r in ACT_TABLE], dtype=dtype, requires_grad=True)
    y = ops.act_quant(x, torch.tensor([0.5]), 0, 15)
    assert y.tolist() == [r[1] for r in ACT_TABLE]
    y.backward(torch.full_like(y, 3.0))
    assert x.grad.tolist() == [3.0 * r[2] for r in ACT_TABLE]


def test_act_quant_nan_and_zero_alpha():
    x = torch.tensor([math.nan, 1.0, -2.0, math.inf], requires_grad=True)
    y = ops.act_quant(x, torch.tensor(0.5), 0, 15)
    assert math.isnan(y[0].item()) and y[1:].tolist() == [1.0, 0.0, 7.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0]  # NaN never passes; ±inf are clamped
    # α = 0 (never calibrated / an all-zero calibration batch): code 0, output 0, no NaN (Q13's rule)
    y0 = ops.act_quant(torch.tensor([1.0, -1.0, 0.0]), torch.tensor(0.0), 0, 15)
    assert y0.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("lo, hi", [(0, 15), (-16, 15), (-8, 7)])
def test_act_quant_matches_numpy(lo, hi, gen):
    # T3: forward α·clamp(round(x/α), lo, hi) and the STE mask [lo <= round(x/α) <= hi], with α = max|x|/hi
    x = (2.0 * torch.randn(8, 16, 5, 5, generator=gen)).float()
    if lo == 0:
        x = x.relu()
    alpha = x.abs().max() / hi
    g = torch.randn(x.shape, generator=gen)
    xr = x.clone().requires_grad_()
    y = ops.act_quant(xr, alpha.reshape(1), lo, hi)
    y.backward(g)
    xn, an = x.numpy(), np.float32(alpha.item())
    assert an == np.float32(np.abs(xn).max()) / np.float32(hi)
    np.testing.assert_array_equal(y.detach().numpy(), np_act_quant(xn, an, lo, hi))
    np.testing.assert_array_equal(xr.grad.numpy(), np_ste(g.numpy(), xn, an, lo, hi))
    codes = np.rint(xn / an)
    assert codes.min() >= lo and codes.max() <= hi  # α = max|x|/hi: the batch it was taken from is not clamped


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty"])
def test_act_quant_random(dtype, layout, gen):
    shape = (0, 5) if layout == "empty" else (6, 7, 9)
    x = (3.0 * torch.randn(shape, generator=gen)).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if layout == "noncontiguous":
        x, g = noncontiguous(x), noncontiguous(g)
    alpha = torch.tensor([0.37], dtype=dtype)
    y = ops.act_quant(x, alpha, -8, 7)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    torch.testing.assert_close(y, ref.act_quant(x, alpha, -8, 7), rtol=0, atol=0)
    gx = _ops._act_quant_backward(g, x, alpha, -8, 7)
    torch.testing.assert_close(gx, ref.act_quant_backward(g, x, alpha, -8, 7), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 7, 8, 1000, 1025, 70001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_act_quant_sizes_and_tails(n, dtype, gen):
    # vector loops, 16-bit types through float tiles of 1024, several threads' shares: every tail
    x = (4.0 * torch.randn(n, generator=gen)).to(dtype)
    alpha = torch.tensor(0.25, dtype=torch.float64)  # any floating dtype, cast to the arithmetic type
    torch.testing.assert_close(ops.act_quant(x, alpha, -16, 15), ref.act_quant(x, alpha, -16, 15), rtol=0, atol=0)


def test_act_quant_alpha_is_not_differentiated():
    x = torch.randn(10, requires_grad=True)
    alpha = torch.tensor([0.3], requires_grad=True)
    ops.act_quant(x, alpha, 0, 15).sum().backward()
    assert alpha.grad is None and x.grad is not None


def test_act_quant_errors():
    x = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match=r"act_quant: alpha must hold one value, got shape \[2\]"):
        ops.act_quant(x, torch.ones(2), 0, 15)
    with pytest.raises(RuntimeError, match="act_quant: low must not exceed high, got 15 and 0"):
        ops.act_quant(x, torch.ones(1), 15, 0)
    with pytest.raises(RuntimeError, match="act_quant: x must be float16, bfloat16, float32 or float64, got Int"):
        ops.act_quant(x.int(), torch.ones(1), 0, 15)
    with pytest.raises(RuntimeError, match=r"_act_quant_backward: x and grad must have the same shape, "
                                           r"got \[4, 3\] and \[4\]"):
        _ops._act_quant_backward(torch.zeros(4), x, torch.ones(1), 0.0, 15.0)


# ---- int_quant -------------------------------------------------------------------------------------------

def test_int_quant_table():
    x = torch.tensor([-0.6, -0.5, 0.5, 1.5, 2.5, 3.49, 14.5, 15.4, 15.6, 99.0], requires_grad=True)
    y = ops.int_quant(x)  # low 0, high 15
    assert y.tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 3.0, 14.0, 15.0, 15.0, 15.0]
    y.sum().backward()
    # STE: the gradient passes where 0 <= round(x) <= 15 (-0.5 rounds to -0, 15.6 to 16)
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert ops.int_quant(torch.tensor([-3.7, 2.2]), -2.0, 1.0).tolist() == [-2.0, 1.0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_int_quant_random(dtype, layout, gen):
    x = (10.0 * torch.randn(40, 33, generator=gen)).to(dtype)
    g = torch.randn(40, 33, generator=gen).to(dtype)
    if layout == "noncontiguous":
        x, g = noncontiguous(x), noncontiguous(g)
    torch.testing.assert_close(ops.int_quant(x, 0, 15), ref.int_quant(x, 0, 15), rtol=0, atol=0)
    torch.testing.assert_close(_ops._int_quant_backward(g, x, 0.0, 15.0), ref.int_quant_backward(g, x, 0, 15),
                               rtol=0, atol=0)
    if dtype == torch.float32:
        xn = x.numpy()
        np.testing.assert_array_equal(ops.int_quant(x, 0, 15).numpy(), np.clip(np.rint(xn), 0, 15))


# ---- quant_weight / quant_weight_codes / quant_weight_fit (§4.6) ---------------------------------------------

def _conv_weight(gen, rows=16):
    """A 4-bit conv weight with 70 % kept, one row fully pruned and one row of zeros (Q13)."""
    w = 0.1 * torch.randn(rows, 8, 3, 3, generator=gen)
    m = random_mask(w.shape, 0.7, generator=gen)
    m[3] = 0
    w[5] = 0
    return w, m


def test_quant_weight_table():
    w = torch.tensor([[0.2, -0.35, 0.05, 1.0], [0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    alpha = torch.tensor([0.1, 0.05, 0.0])
    # row 0: v = [0.2, -0.35, 0.05, 0] -> codes [2, -4 (-3.5 to even), 0 (0.5 to even), 0]
    # row 1: codes [2, 4, 6, 8 -> 7]; row 2: α = 0 -> 0
    q = ops.quant_weight_codes(w, m, alpha, -8, 7)
    assert q.tolist() == [[2.0, -4.0, 0.0, 0.0], [2.0, 4.0, 6.0, 7.0], [0.0, 0.0, 0.0, 0.0]]
    wq = ops.quant_weight(w, m, alpha, -8, 7)
    torch.testing.assert_close(wq, alpha[:, None] * q, rtol=0, atol=0)
    # without a mask every entry counts
    assert ops.quant_weight_codes(w, None, alpha, -8, 7)[0].tolist() == [2.0, -4.0, 0.0, 7.0]


def test_quant_weight_fit_matches_numpy_als(gen):
    # T3: per-channel ALS, 100 iterations, on W⊙M; an all-zero row gives α = 0 and 0, not NaN
    w, m = _conv_weight(gen)
    alpha = ops.quant_weight_fit(w, m, bitwidth=4, iters=100)
    v = (w * m).reshape(16, -1).numpy()
    alpha_np = np_als(v, 4, 100)
    np.testing.assert_array_equal(alpha.numpy(), alpha_np)
    assert alpha[3] == 0 and alpha[5] == 0 and (alpha[[0, 1, 2, 4, 6]] > 0).all()
    wq = ops.quant_weight(w, m, alpha, -8, 7)
    wq_np = np.stack([a * np_code(row, a, -8, 7) for row, a in zip(v, alpha_np)]).reshape(w.shape)
    np.testing.assert_array_equal(wq.numpy(), wq_np)
    assert torch.isfinite(wq).all() and torch.all(wq[3] == 0) and torch.all(wq[5] == 0)
    codes = ops.quant_weight_codes(w, m, alpha, -8, 7)
    assert torch.equal(codes, torch.round(codes)) and codes.min() >= -8 and codes.max() <= 7
    assert codes.abs().max() >= 7  # the row maxima reach the end of the range
    torch.testing.assert_close(alpha, ref.quant_weight_fit(w, m, 4, 100), rtol=0, atol=0)


def test_quant_weight_fit_iterations_improve_the_fit(gen):
    # ALS steps lower the squared error against v relative to the max-based start (iters = 0)
    w, m = _conv_weight(gen)
    v = w * m
    err = []
    for iters in (0, 100):
        a = ops.quant_weight_fit(w, m, 4, iters)
        err.append(float(((ops.quant_weight(w, m, a, -8, 7) - v) ** 2).sum()))
    assert err[1] < err[0]
    a0 = ops.quant_weight_fit(w, m, 4, 0)
    torch.testing.assert_close(a0, (v.reshape(16, -1).abs().amax(1) / 8), rtol=0, atol=0)


def test_quant_weight_fit_per_tensor_and_other_shapes(gen):
    w, m = _conv_weight(gen)
    a = ops.quant_weight_fit(w, m, 4, 20, per_channel=False)
    assert a.shape == (16,) and torch.all(a == a[0])
    np.testing.assert_array_equal(a[:1].numpy(), np_als((w * m).reshape(1, -1).numpy(), 4, 20))
    fc = 0.2 * torch.randn(10, 30, generator=gen, dtype=torch.float64)
    a64 = ops.quant_weight_fit(fc, None, 6, 100)
    assert a64.dtype == torch.float64
    torch.testing.assert_close(a64, ref.quant_weight_fit(fc, None, 6, 100), rtol=1e-15, atol=0)
    assert ops.quant_weight_fit(torch.zeros(0, 4), None, 4).shape == (0,)


def test_quant_weight_gradient_is_straight_through(gen):
    # T3: dW == dWq (unmasked, also for pruned entries); the bottom diff uses Wq
    w, m = _conv_weight(gen)
    w = w.double().requires_grad_()
    m = m.double()
    alpha = ops.quant_weight_fit(w, m, 4, 100)
    x = torch.randn(2, 8, 7, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 16, 5, 5, generator=gen, dtype=torch.float64)
    (F.conv2d(x, ops.quant_weight(w, m, alpha, -8, 7)) * c).sum().backward()
    wq = ops.quant_weight(w.detach(), m, alpha, -8, 7).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, wq) * c).sum().backward()
    assert torch.equal(w.grad, wq.grad)
    assert torch.equal(x.grad, x2.grad)
    assert (w.grad[m == 0] != 0).any()  # pruned weights keep learning


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "nomask", "empty"])
def test_quant_weight_random(dtype, layout, gen):
    shape = (0, 3, 3) if layout == "empty" else (24, 5, 3, 3)
    w = (0.1 * torch.randn(shape, generator=gen)).to(dtype)
    m = random_mask(shape, dtype=dtype, generator=gen)
    alpha = (0.02 * torch.rand(shape[0], generator=gen)).to(dtype)
    if shape[0]:
        alpha[2] = 0
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
        alpha = noncontiguous(alpha)
    if layout == "nomask":
        m = None
    for fn, rf in ((ops.quant_weight, ref.quant_weight), (ops.quant_weight_codes, ref.quant_weight_codes)):
        out = fn(w, m, alpha, -8, 7)
        assert out.shape == w.shape and out.dtype == dtype
        torch.testing.assert_close(out, rf(w, m, alpha, -8, 7), rtol=0, atol=0)


@pytest.mark.parametrize("rows, k", [(1, 70001), (3, 40000), (700, 3), (5, 1)])
def test_quant_weight_rows_across_thread_chunks(rows, k, gen):
    # threads take element ranges that start and end inside rows: each segment must use its own row's α
    w = torch.randn(rows, k, generator=gen)
    alpha = 0.1 + torch.rand(rows, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(max(2, old))
        out = ops.quant_weight(w, None, alpha, -8, 7)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(out, ref.quant_weight(w, None, alpha, -8, 7), rtol=0, atol=0)


def test_quant_weight_errors():
    w = torch.zeros(20, 1, 5, 5)
    with pytest.raises(RuntimeError, match=r"quant_weight: alpha must hold one scale per row of weight, "
                                           r"shape \[20\], got \[19\]"):
        ops.quant_weight(w, None, torch.ones(19), -8, 7)
    with pytest.raises(RuntimeError, match="quant_weight: alpha must have the weight's dtype Float, got Double"):
        ops.quant_weight(w, None, torch.ones(20, dtype=torch.float64), -8, 7)
    with pytest.raises(RuntimeError, match=r"quant_weight_codes: weight and mask must have the same shape"):
        ops.quant_weight_codes(w, torch.ones(20, 1, 5), torch.ones(20), -8, 7)
    with pytest.raises(RuntimeError, match="quant_weight: weight must have a row"):
        ops.quant_weight(torch.tensor(1.0), None, torch.ones(1), -8, 7)


# ---- opcheck, meta, compile ------------------------------------------------------------------------------------

def _opcheck_samples(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=dtype)
    w = torch.randn(6, 4, generator=g, dtype=dtype)
    m = random_mask((6, 4), dtype=dtype, generator=g)
    alpha = torch.rand(6, generator=g, dtype=dtype) + 0.1
    a1 = torch.tensor([0.3], dtype=dtype)
    yield _ops.act_quant.default, (x.clone().requires_grad_(), a1, -8.0, 7.0)
    yield _ops.act_quant.default, (noncontiguous(x), a1, 0.0, 15.0)
    yield _ops._act_quant_backward.default, (x, x, a1, 0.0, 15.0)
    yield _ops.int_quant.default, ((4 * x).requires_grad_(), 0.0, 15.0)
    yield _ops._int_quant_backward.default, (x, 4 * x, 0.0, 15.0)
    yield _ops.quant_weight.default, (w.clone().requires_grad_(), m, alpha, -8.0, 7.0)
    yield _ops.quant_weight.default, (noncontiguous(w).requires_grad_(), None, alpha, -8.0, 7.0)
    yield _ops.quant_weight_codes.default, (w, m, alpha, -8.0, 7.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    for op, args in _opcheck_samples(dtype):
        torch.library.opcheck(op, args)


def test_meta_shapes():
    x = torch.empty(2, 3, 5, device="meta")
    a = torch.empty(1, device="meta")
    assert ops.act_quant(x, a, 0, 15).shape == (2, 3, 5)
    assert ops.int_quant(x).shape == (2, 3, 5)
    w = torch.empty(20, 1, 5, 5, device="meta")
    assert ops.quant_weight(w, w, torch.empty(20, device="meta"), -8, 7).shape == (20, 1, 5, 5)
    assert ops.quant_weight_codes(w, None, torch.empty(20, device="meta"), -8, 7).shape == (20, 1, 5, 5)


def _quant_step(x, w, m, w_alpha, a_alpha):
    # A MicroNet unit: ActQuant on the input, then a conv with the quantized weights.
    return F.conv2d(ops.act_quant(F.relu(x), a_alpha, 0, 15), ops.quant_weight(w, m, w_alpha, -8, 7))


def test_compile_smoke(gen):
    x = torch.randn(2, 3, 12, 12, generator=gen, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, generator=gen, requires_grad=True)
    m = random_mask(w.shape, generator=gen)
    w_alpha = ops.quant_weight_fit(w, m, 4, 10)
    a_alpha = torch.tensor([0.2])
    y_eager = _quant_step(x, w, m, w_alpha, a_alpha)
    y_eager.sum().backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    compiled = torch.compile(_quant_step, backend="aot_eager", fullgraph=True)
    y_comp = compiled(x, w, m, w_alpha, a_alpha)
    y_comp.sum().backward()
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)
    torch.testing.assert_close(w.grad, gw, rtol=0, atol=0)


# ---- CPU / CUDA parity -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_parity(dtype, gen):
    x = (3.0 * torch.randn(300, 70, 3, generator=gen)).to(dtype)
    g = torch.randn(x.shape, generator=gen).to(dtype)
    alpha = torch.tensor([0.37], dtype=dtype)
    xc, gc = x.cuda(), g.cuda()
    for a in (alpha.cuda(), alpha):  # α on the device, or read on the host
        assert torch.equal(ops.act_quant(xc, a, -16, 15).cpu(), ops.act_quant(x, alpha, -16, 15))
        assert torch.equal(_ops._act_quant_backward(gc, xc, a, -16.0, 15.0).cpu(),
                           _ops._act_quant_backward(g, x, alpha, -16.0, 15.0))
    assert torch.equal(ops.int_quant(xc * 4).cpu(), ops.int_quant(x * 4))
    assert torch.equal(_ops._int_quant_backward(gc, xc * 4, 0.0, 15.0).cpu(),
                       _ops._int_quant_backward(g, x * 4, 0.0, 15.0))
    w = (0.1 * torch.randn(64, 16, 3, 3, generator=gen)).to(dtype)
    m = random_mask(w.shape, dtype=dtype, generator=gen)
    wa = (0.01 + 0.02 * torch.rand(64, generator=gen)).to(dtype)
    wa[7] = 0
    for mask in (m, None):
        mc = None if mask is None else mask.cuda()
        assert torch.equal(ops.quant_weight(w.cuda(), mc, wa.cuda(), -8, 7).cpu(), ops.quant_weight(w, mask, wa, -8, 7))
        assert torch.equal(ops.quant_weight_codes(w.cuda(), mc, wa.cuda(), -8, 7).cpu(),
                           ops.quant_weight_codes(w, mask, wa, -8, 7))
    if dtype in (torch.float32, torch.float64):
        # the ALS fit: row sums in a different order on the device, so α may differ in the last bit
        torch.testing.assert_close(ops.quant_weight_fit(w.cuda(), m.cuda(), 4).cpu(), ops.quant_weight_fit(w, m, 4),
                                   rtol=1e-6, atol=0)


@pytest.mark.cuda
def test_cuda_opcheck():
    for op, args in _opcheck_samples(torch.float32):
        cuda_args = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                          for a in args)
        torch.library.opcheck(op, cuda_args)
