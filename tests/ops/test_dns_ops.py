"""DNS ops (reference-semantics §2.3-2.4): dns_masked_weight, dns_stats, dns_update_mask_, dns_splice_grad_."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import misaligned, noncontiguous, random_mask

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---- dns_masked_weight ------------------------------------------------------------------------------

def test_masked_weight_table():
    w = torch.tensor([1.0, -2.0, 3.0, 0.5])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert ops.dns_masked_weight(w, m).tolist() == [1.0, 0.0, 3.0, 0.0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty"])
def test_masked_weight_random(dtype, layout, gen):
    shape = (0, 5) if layout == "empty" else (20, 1, 5, 5)
    w = torch.randn(shape, generator=gen).to(dtype)
    m = random_mask(shape, dtype=dtype, generator=gen)
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
    out = ops.dns_masked_weight(w, m)
    assert out.shape == w.shape and out.dtype == dtype and out.is_contiguous()
    torch.testing.assert_close(out, ref.dns_masked_weight(w, m), rtol=0, atol=0)


def test_masked_weight_errors():
    w = torch.zeros(20, 1, 5, 5)
    with pytest.raises(RuntimeError, match=r"dns_masked_weight: weight and mask must have the same shape, "
                                           r"got \[20, 1, 5, 5\] and \[20, 1, 5\]"):
        ops.dns_masked_weight(w, torch.zeros(20, 1, 5))
    with pytest.raises(RuntimeError, match="dns_masked_weight: weight and mask must have the same dtype"):
        ops.dns_masked_weight(w, torch.zeros(20, 1, 5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="dns_masked_weight: weight must be float16, bfloat16, float32 or "
                                           "float64, got Int"):
        ops.dns_masked_weight(w.int(), w.int())


def test_masked_weight_gradient_is_unmasked(gen):
    # Splicing (§2.4): ∂L/∂W := ∂L/∂(W⊙M), pruned weights included; the mask gets no gradient.
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    m = random_mask((4, 3), dtype=torch.float64, generator=gen).requires_grad_()
    c = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    (ops.dns_masked_weight(w, m) * c).sum().backward()
    assert torch.equal(w.grad, c)
    assert m.grad is None


def test_masked_weight_gradient_in_conv(gen):
    # Weight gradient = the plain conv's weight gradient evaluated at W⊙M; input gradient uses W⊙M.
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    m = random_mask(w.shape, dtype=torch.float64, generator=gen)
    F.conv2d(x, ops.dns_masked_weight(w, m)).square().sum().backward()
    x2 = x.detach().clone().requires_grad_()
    w_eff = (w.detach() * m).requires_grad_()
    F.conv2d(x2, w_eff).square().sum().backward()
    torch.testing.assert_close(w.grad, w_eff.grad, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


# ---- dns_stats ----------------------------------------------------------------------------------------

def test_stats_table():
    # nonzero m·w: 0.5, −1.5 (weight), 1.0 (bias); the 0 weight and the masked 2.0 are excluded.
    w = torch.tensor([0.5, -1.5, 0.0, 2.0])
    wm = torch.tensor([1.0, 1.0, 1.0, 0.0])
    b = torch.tensor([1.0, 0.0])
    bm = torch.tensor([1.0, 1.0])
    mu, std, nw, nb = ops.dns_stats(w, wm, b, bm).tolist()
    assert (mu, nw, nb) == (1.0, 2.0, 1.0)
    assert std == pytest.approx(math.sqrt((3.5 - 3.0) / 3.0), rel=1e-15)


def test_stats_non_binary_mask_uses_m_times_w_squared():
    # S2 = Σ m·w² (the reference's form), not Σ (m·w)²: w = 2, m = 0.5 gives mu = 1, std = sqrt(2 − 1) = 1.
    out = ops.dns_stats(torch.tensor([2.0]), torch.tensor([0.5])).tolist()
    assert out == [1.0, 1.0, 1.0, 0.0]


def test_stats_no_survivors_is_nan():
    w = torch.randn(3, 3)
    out = ops.dns_stats(w, torch.zeros(3, 3))
    assert math.isnan(out[0]) and math.isnan(out[1]) and out[2:].tolist() == [0.0, 0.0]
    empty = ops.dns_stats(torch.zeros(0, 4), torch.zeros(0, 4))
    assert math.isnan(empty[0]) and empty[2:].tolist() == [0.0, 0.0]


def test_stats_equal_magnitudes_give_zero_std():
    # S2 − n·mu² may round below 0; the op clamps the variance to 0 instead of returning NaN.
    # (100 × 0.1f: S2 − n·mu² = −2.7e-17 in float64 when summed in order.)
    w = torch.full((100,), 0.1)
    assert ops.dns_stats(w, torch.ones(100))[1].item() == 0.0


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "nobias"])
def test_stats_random(dtype, layout, gen):
    w = torch.randn(50, 20, 3, 3, generator=gen).to(dtype)
    wm = random_mask(w.shape, dtype=dtype, generator=gen)
    b = torch.randn(50, generator=gen).to(dtype)
    bm = random_mask(b.shape, dtype=dtype, generator=gen)
    if layout == "noncontiguous":
        w, wm = noncontiguous(w), noncontiguous(wm)
    args = (w, wm) if layout == "nobias" else (w, wm, b, bm)
    out = ops.dns_stats(*args)
    assert out.dtype == torch.float64 and out.shape == (4,)
    torch.testing.assert_close(out, ref.dns_stats(*args), rtol=1e-12, atol=0)


def test_stats_large_is_thread_count_independent(gen):
    # Fixed-size blocks added in order: the same bits whatever the number of threads.
    w = torch.randn(300_000, generator=gen)
    m = random_mask(w.shape, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.dns_stats(w, m)
        torch.set_num_threads(max(2, old))
        many = ops.dns_stats(w, m)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)
    torch.testing.assert_close(one, ref.dns_stats(w, m), rtol=1e-12, atol=0)


def test_stats_errors():
    w = torch.zeros(3)
    with pytest.raises(RuntimeError, match="dns_stats: bias and bias_mask must be given together"):
        ops.dns_stats(w, w, torch.zeros(2))
    with pytest.raises(RuntimeError, match=r"dns_stats: bias and bias_mask must have the same shape, "
                                           r"got \[2\] and \[3\]"):
        ops.dns_stats(w, w, torch.zeros(2), torch.zeros(3))


def test_stats_does_not_track_gradients():
    w = torch.randn(5, requires_grad=True)
    assert not ops.dns_stats(w, torch.ones(5)).requires_grad


# ---- dns_thresholds + dns_update_mask_ -------------------------------------------------------------------

def test_thresholds():
    stats = torch.tensor([1.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    low, high = ops.dns_thresholds(stats, c_rate=2.0)
    assert (low.item(), high.item()) == pytest.approx((0.95 * 2.0, 1.05 * 2.0))
    low, high = ops.dns_thresholds(stats, c_rate=-4.0)  # T = max(1 − 2, 0) = 0
    assert (low.item(), high.item()) == (0.0, 0.0)
    low, _ = ops.dns_thresholds(torch.full((4,), math.nan, dtype=torch.float64), c_rate=1.0)
    assert math.isnan(low.item())  # n == 0 stays NaN: masks then never change


# T = 1 with the default alphas: prune m == 1 ∧ |w| <= 0.95, splice m == 0 ∧ |w| > 1.05.
UPDATE_TABLE = [
    # w,     m,   new m
    (0.5,   1.0, 0.0),
    (0.95,  1.0, 0.0),   # equal to low: pruned
    (0.96,  1.0, 1.0),
    (1.05,  0.0, 0.0),   # equal to high: not spliced
    (1.06,  0.0, 1.0),
    (2.0,   0.0, 1.0),
    (-0.5,  1.0, 0.0),
    (-1.2,  0.0, 1.0),
    (1.0,   0.0, 0.0),   # between the thresholds: unchanged
    (1.0,   1.0, 1.0),
    (0.3,   0.5, 0.5),   # other mask values are left alone
    (9.0,   2.0, 2.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_update_mask_table(dtype):
    w = torch.tensor([r[0] for r in UPDATE_TABLE], dtype=dtype)
    m = torch.tensor([r[1] for r in UPDATE_TABLE], dtype=dtype)
    out = torch.full_like(w, 123.0)
    ops.dns_update_mask_(w, m, 0.95, 1.05, out)
    assert m.tolist() == [r[2] for r in UPDATE_TABLE]
    assert torch.equal(out, w * m)


def test_update_mask_nan_threshold_changes_nothing(gen):
    w = torch.randn(100, generator=gen)
    m = random_mask(w.shape, generator=gen)
    m0 = m.clone()
    out = torch.empty_like(w)
    ops.dns_update_mask_(w, m, math.nan, math.nan, out)
    assert torch.equal(m, m0) and torch.equal(out, w * m0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty"])
@pytest.mark.parametrize("tensor_thresholds", [True, False])
def test_update_mask_random(dtype, layout, tensor_thresholds, gen):
    shape = (0, 7) if layout == "empty" else (64, 3, 3, 3)
    w = (0.1 * torch.randn(shape, generator=gen)).to(dtype)
    m = random_mask(shape, dtype=dtype, generator=gen)
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
    low, high = ops.dns_thresholds(ops.dns_stats(w, m), c_rate=0.3)
    if not tensor_thresholds:
        low, high = low.item(), high.item()
    m0, m_ref, out_ref = m.clone(), m.clone(), torch.empty_like(w)
    ref.dns_update_mask_(w, m_ref, float(low), float(high), out_ref)
    out = noncontiguous(torch.empty_like(w)) if layout == "noncontiguous" else torch.empty_like(w)
    ops.dns_update_mask_(w, m, low, high, out)
    assert torch.equal(m, m_ref)
    assert torch.equal(out, out_ref)
    if layout != "empty":  # the inputs exercise both pruning and splicing
        assert ((m0 == 1) & (m == 0)).any() and ((m0 == 0) & (m == 1)).any()


def test_update_mask_full_step_matches_reference(gen):
    # stats -> thresholds -> fused update over weight and bias with the same T, as a DNS layer does.
    w, b = torch.randn(20, 1, 5, 5, generator=gen), torch.randn(20, generator=gen)
    wm, bm = torch.ones_like(w), torch.ones_like(b)
    stats = ops.dns_stats(w, wm, b, bm)
    low, high = ops.dns_thresholds(stats, c_rate=1.0)
    wm_ref, bm_ref = wm.clone(), bm.clone()
    for x, m, m_ref in ((w, wm, wm_ref), (b, bm, bm_ref)):
        ops.dns_update_mask_(x, m, low, high, torch.empty_like(x))
        ref.dns_update_mask_(x, m_ref, low.item(), high.item(), torch.empty_like(x))
    assert torch.equal(wm, wm_ref) and torch.equal(bm, bm_ref)
    assert 0 < wm.sum() < w.numel()


def test_update_mask_errors():
    w = torch.zeros(20, 1, 5, 5)
    with pytest.raises(RuntimeError, match=r"dns_update_mask_: weight and mask must have the same shape, "
                                           r"got \[20, 1, 5, 5\] and \[20, 1, 5\]"):
        ops.dns_update_mask_(w, torch.zeros(20, 1, 5), 0.1, 0.2, torch.zeros_like(w))
    with pytest.raises(RuntimeError, match=r"dns_update_mask_: threshold_low must hold one value, got shape \[2\]"):
        ops.dns_update_mask_(w, torch.zeros_like(w), torch.zeros(2), 0.2, torch.zeros_like(w))
    with pytest.raises(RuntimeError, match="dns_update_mask_: weight and masked_out must have the same dtype"):
        ops.dns_update_mask_(w, torch.zeros_like(w), 0.1, 0.2, torch.zeros_like(w, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 8, 1000, 16387, 70001])
def test_update_mask_sizes_and_tails(dtype, n, gen):
    # The CPU loops run in vectors, 16-bit types through float tiles of 1024: every length, tails included.
    w = torch.randn(n, generator=gen).to(dtype)
    m = torch.randint(0, 3, (n,), generator=gen).to(dtype)  # 0, 1 and a kept 2
    m_ref, out, out_ref = m.clone(), torch.empty_like(w), torch.empty_like(w)
    ops.dns_update_mask_(w, m, 0.5, 0.8, out)
    ref.dns_update_mask_(w, m_ref, 0.5, 0.8, out_ref)
    assert torch.equal(m, m_ref) and torch.equal(out, out_ref)
    torch.testing.assert_close(ops.dns_masked_weight(w, m), ref.dns_masked_weight(w, m), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_stats_large_matches_reference(dtype, gen):
    # Several reduction blocks and a ragged tail; non-binary mask values weigh by m·w².
    w = torch.randn(100_003, generator=gen).to(dtype)
    m = torch.randint(0, 3, (100_003,), generator=gen).to(dtype) / 2
    torch.testing.assert_close(ops.dns_stats(w, m), ref.dns_stats(w, m), rtol=1e-12, atol=0)


# ---- dns_splice_grad_ (§2.4, one backward call) -------------------------------------------------------

def test_splice_grad_table():
    d = torch.tensor([1.0, 2.0, -3.0, 4.0])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    g = torch.tensor([0.5, 0.5, 0.5, -1.0])
    ops.dns_splice_grad_(d, m, g)
    # the accumulated gradient survives where the mask is 1; the new one is added everywhere (unmasked)
    assert d.tolist() == [1.5, 0.5, -2.5, -1.0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty", "large"])
def test_splice_grad_random(dtype, layout, gen):
    shape = {"empty": (0, 3), "large": (70001,)}.get(layout, (30, 7))
    d = torch.randn(shape, generator=gen).to(dtype)
    m = random_mask(shape, dtype=dtype, generator=gen)
    g = torch.randn(shape, generator=gen).to(dtype)
    d_ref = d.clone()
    ref.dns_splice_grad_(d_ref, m, g)
    if layout == "noncontiguous":
        d, m, g = noncontiguous(d), noncontiguous(m), noncontiguous(g)
    ops.dns_splice_grad_(d, m, g)
    torch.testing.assert_close(d, d_ref, rtol=0, atol=0)


def test_splice_grad_matches_two_backward_calls(gen):
    # What iter_size = 2 does in the reference: diff <- m⊙diff + g at each backward call.
    m = random_mask((5, 4), generator=gen)
    g1, g2 = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    d = torch.zeros(5, 4)
    ops.dns_splice_grad_(d, m, g1)
    ops.dns_splice_grad_(d, m, g2)
    torch.testing.assert_close(d, m * g1 + g2, rtol=0, atol=0)


def test_splice_grad_errors():
    d = torch.zeros(5, 2)
    with pytest.raises(RuntimeError, match=r"dns_splice_grad_: diff and grad must have the same shape, "
                                           r"got \[5, 2\] and \[5\]"):
        ops.dns_splice_grad_(d, torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(RuntimeError, match="dns_splice_grad_: diff must be float16, bfloat16, float32 or "
                                           "float64, got Long"):
        ops.dns_splice_grad_(d.long(), d.long(), d.long())


# ---- opcheck ---------------------------------------------------------------------------------------------

def _opcheck_samples(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g, dtype=dtype)
    m = random_mask((6, 4), dtype=dtype, generator=g)
    b = torch.randn(6, generator=g, dtype=dtype)
    bm = random_mask((6,), dtype=dtype, generator=g)
    yield torch.ops.netcompress.dns_masked_weight.default, (w.clone().requires_grad_(), m)
    yield torch.ops.netcompress.dns_masked_weight.default, (noncontiguous(w), noncontiguous(m))
    yield torch.ops.netcompress.dns_stats.default, (w, m, b, bm)
    yield torch.ops.netcompress.dns_stats.default, (w, m)
    thr = torch.tensor(0.5, dtype=torch.float64)
    yield torch.ops.netcompress.dns_update_mask_.default, (w, m.clone(), thr, thr * 2, torch.empty_like(w))
    yield torch.ops.netcompress.dns_splice_grad_.default, (w.clone(), m, b.new_ones(6, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    for op, args in _opcheck_samples(dtype):
        torch.library.opcheck(op, args)


# ---- CPU / CUDA parity -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["aligned", "misaligned"])
def test_cuda_parity(dtype, layout, gen):
    # Element-wise ops bit for bit (no FMA on either side: kernels/dns.h); the statistics to float64 rounding
    # (the CPU and the GPU add in different orders), and deterministic on the GPU. 63000 + 5 entries: 16-byte
    # packs and a tail; a misaligned layout runs the scalar kernels.
    place = misaligned if layout == "misaligned" else (lambda t: t)
    w = torch.randn(300, 70, 3, generator=gen).to(dtype)
    w = torch.cat([w.reshape(-1), torch.randn(5, generator=gen).to(dtype)])
    m = random_mask(w.shape, dtype=dtype, generator=gen)
    b = torch.randn(300, generator=gen).to(dtype)
    bm = random_mask(b.shape, dtype=dtype, generator=gen)
    soft = torch.rand(w.shape, generator=gen).to(dtype)  # a non-binary mask: every product rounds
    dev = [place(x.cuda()) for x in (w, m, b, bm)]
    assert torch.equal(ops.dns_masked_weight(w, m), ops.dns_masked_weight(*dev[:2]).cpu())
    assert torch.equal(ops.dns_masked_weight(w, soft), ops.dns_masked_weight(dev[0], place(soft.cuda())).cpu())
    s_cpu, s_gpu = ops.dns_stats(w, m, b, bm), ops.dns_stats(*dev)
    assert s_gpu.device.type == "cuda"
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, rtol=1e-12, atol=0)
    assert torch.equal(s_gpu.cpu()[2:], s_cpu[2:])  # the counts exactly
    assert torch.equal(ops.dns_stats(*dev), s_gpu)  # deterministic reduction
    torch.testing.assert_close(ops.dns_stats(dev[0], place(soft.cuda())).cpu(), ops.dns_stats(w, soft), rtol=1e-12,
                               atol=0)
    low, high = ops.dns_thresholds(s_cpu, c_rate=0.5)
    m_cpu, out_cpu = m.clone(), torch.empty_like(w)
    ops.dns_update_mask_(w, m_cpu, low, high, out_cpu)
    # Thresholds as the layers pass them: float32 tensors on the device; also float64 ones, and CPU ones.
    for lo, hi in ((low.float().cuda(), high.float().cuda()), (low.cuda(), high.cuda()), (low, high)):
        m_cpu2, out_cpu2 = m.clone(), torch.empty_like(w)
        ops.dns_update_mask_(w, m_cpu2, lo.cpu(), hi.cpu(), out_cpu2)
        m_gpu, out_gpu = place(dev[1].clone()), place(torch.empty_like(dev[0]))
        ops.dns_update_mask_(dev[0], m_gpu, lo, hi, out_gpu)
        assert torch.equal(m_gpu.cpu(), m_cpu2) and torch.equal(out_gpu.cpu(), out_cpu2)
    assert torch.equal(m_gpu.cpu(), m_cpu) and torch.equal(out_gpu.cpu(), out_cpu)
    empty = torch.zeros(0, 3, device="cuda", dtype=dtype)
    assert math.isnan(ops.dns_stats(empty, empty)[0].item())
    d, g = torch.randn(w.shape, generator=gen).to(dtype), torch.randn(w.shape, generator=gen).to(dtype)
    for mask in (m, soft):
        d_cpu, d_gpu = d.clone(), place(d.cuda())
        ops.dns_splice_grad_(d_cpu, mask, g)
        ops.dns_splice_grad_(d_gpu, place(mask.cuda()), place(g.cuda()))
        assert torch.equal(d_gpu.cpu(), d_cpu)


@pytest.mark.cuda
def test_cuda_masked_weight_gradient_is_unmasked(gen):
    # The C++ autograd (csrc/autograd.cpp) on the CUDA kernel: ∂L/∂W = ∂L/∂(W⊙M), the mask gets none.
    w = torch.randn(40, 30, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    m = random_mask((40, 30), dtype=torch.float64, generator=gen).cuda().requires_grad_()
    c = torch.randn(40, 30, generator=gen, dtype=torch.float64).cuda()
    (ops.dns_masked_weight(w, m) * c).sum().backward()
    assert torch.equal(w.grad, c) and m.grad is None


@pytest.mark.cuda
def test_cuda_opcheck():
    for op, args in _opcheck_samples(torch.float32):
        cuda_args = tuple(a.detach().cuda().requires_grad_(a.requires_grad) for a in args)
        torch.library.opcheck(op, cuda_args)
