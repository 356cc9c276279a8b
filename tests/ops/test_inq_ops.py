"""INQ ops (reference-semantics §3.3-3.5): partition counts, mask statistics and exponent range,
selection threshold, power-of-two quantization."""
from __future__ import annotations

import math

import pytest
import torch

from netcompress import ops
from netcompress.layers import inq
from netcompress.ops import reference as ref

from op_helpers import misaligned, noncontiguous, random_mask

DTYPES = [torch.float32, torch.float64]

# ---- inq_partition_counts: the 24 logged vectors of §3.4 ------------------------------------------------

PARTITION_VECTORS = [
    # n_yet, p0, p1, n_init, n_keep, n_update
    (105, 0, .3, 105, 73, 32),       # exact decimals would give 74
    (828, 0, .3, 828, 580, 248),
    (4326, 0, .3, 4326, 3028, 1298),
    (198, 0, .3, 198, 139, 59),
    (73, .3, .6, 104, 42, 31),
    (580, .3, .6, 829, 332, 248),
    (3028, .3, .6, 4326, 1730, 1298),
    (139, .3, .6, 199, 80, 59),
    (42, .6, .8, 105, 21, 21),
    (332, .6, .8, 830, 166, 166),
    (1730, .6, .8, 4325, 865, 865),
    (80, .6, .8, 200, 40, 40),
    (21, .8, .9, 105, 11, 10),
    (166, .8, .9, 830, 83, 83),
    (865, .8, .9, 4325, 433, 432),
    (40, .8, .9, 200, 20, 20),
    (11, .8, 1.0, 55, 0, 11),
    (83, .8, 1.0, 415, 0, 83),
    (433, .8, 1.0, 2165, 0, 433),
    (20, .8, 1.0, 100, 0, 20),
    (29785, 0, .3, 29785, 20849, 8936),
    (96, 0, .3, 96, 67, 29),
    (10, 0, .3, 10, 7, 3),           # README example
    (10, .5, .6, 20, 8, 2),          # README example
]


@pytest.mark.parametrize("n_yet,p0,p1,n_init,n_keep,n_update", PARTITION_VECTORS)
def test_partition_counts_vectors(n_yet, p0, p1, n_init, n_keep, n_update):
    assert inq.inq_partition_counts(n_yet, p0, p1) == (n_init, n_keep, n_update)


def test_round_half_away():
    assert [inq.round_half_away(x) for x in (0.5, 1.5, 2.5, -0.5, -2.5, 0.49999999999999994, 2.4999)] == \
        [1, 2, 3, -1, -3, 0, 2]


def test_partition_counts_undefined_cases():
    with pytest.raises(ValueError, match="inq_partition_counts: portion\\[0\\] must be < 1"):
        inq.inq_partition_counts(10, 1.0, 1.0)
    with pytest.raises(ValueError, match="inq_partition_counts: portion\\[1\\] must be <= 1"):
        inq.inq_partition_counts(10, 0.0, 1.5)


# ---- inq_quantize_: the rounding rule of §3.5 -------------------------------------------------------------

ROUNDING_TABLE_N2_MINUS_7 = [
    (0.75, 1.0),
    (0.7499, 0.5),
    (1.4999, 1.0),
    (1.5, 2.0),
    (-0.2, -0.25),
    (0.012, 2.0 ** -6),
    (0.0117, 2.0 ** -7),
    (3 * 2.0 ** -9, 2.0 ** -7),
    (0.999 * 3 * 2.0 ** -9, 0.0),
    (0.0, 0.0),
    (1000.0, 1024.0),  # no upper clamp
]


def _quantize_all(values, dtype, n2):
    w = torch.tensor(values, dtype=dtype)
    m = torch.ones_like(w)
    ops.inq_quantize_(w, m, 0.0, n2)
    assert m.sum() == 0
    return w.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rounding_table(dtype):
    got = _quantize_all([v for v, _ in ROUNDING_TABLE_N2_MINUS_7], dtype, n2=-7)
    assert got == [r for _, r in ROUNDING_TABLE_N2_MINUS_7]


@pytest.mark.parametrize("k", [-29, -31, -39])
def test_rounding_log_ratio_boundaries(k):
    # 4|v|/3 = 2^k exactly: log(2^k)/log(2) rounds 1 ulp below k, so the reference returns 2^(k−1).
    v = 3.0 * 2.0 ** (k - 2)
    assert _quantize_all([v, -v], torch.float32, n2=-200) == [2.0 ** (k - 1), -(2.0 ** (k - 1))]
    assert ref.inq_round_pow2(v, -200) == 2.0 ** (k - 1)
    # Neighbouring exponents where the ratio is exact keep k.
    assert _quantize_all([3.0 * 2.0 ** (-30 - 2)], torch.float32, n2=-200) == [2.0 ** -30]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rounding_every_float32_power_boundary(dtype):
    # v = 1.5·2^(k−1) puts 4|v|/3 exactly on 2^k; just below and above it as well. Over every k a float32
    # weight can reach, the kernel's (frexp + exact k·ln2) form must equal the C library's log ratio.
    vals = []
    for k in range(-147, 128):
        v = 3.0 * 2.0 ** (k - 2)
        vals += [v, math.nextafter(v, 0.0), math.nextafter(v, math.inf)]
    w = torch.tensor(vals, dtype=torch.float64).to(dtype)
    expected = [ref.inq_round_pow2(v, -1000) for v in w.tolist()]
    got = _quantize_all(w.tolist(), dtype, n2=-1000)
    assert got == [float(torch.tensor(e, dtype=dtype)) for e in expected]


def test_rounding_non_finite_values():
    # ±inf is selected and ends at 0 (the reference's (int) of an infinite exponent is INT_MIN on x86);
    # NaN fails `|v| >= thr`, so it is never selected and keeps mask 1.
    w = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float64)
    m = torch.ones(3, dtype=torch.float64)
    ops.inq_quantize_(w, m, 0.0, -7)
    assert w[:2].tolist() == [0.0, 0.0] and math.isnan(w[2]) and m.tolist() == [0.0, 0.0, 1.0]


def test_quantize_selects_mask_one_at_or_above_threshold():
    w = torch.tensor([0.5, -0.5, 0.25, 0.7, 0.9, 0.6, 0.55])
    m = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 1.0, 1.0])
    ops.inq_quantize_(w, m, torch.tensor(0.5), -7)
    # ties at the threshold are quantized; below it, mask 0 and mask 2 entries are untouched.
    assert w.tolist() == [0.5, -0.5, 0.25, pytest.approx(0.7), pytest.approx(0.9), 0.5, 0.5]
    assert m.tolist() == [0.0, 0.0, 1.0, 0.0, 2.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty"])
def test_quantize_random(dtype, layout, gen):
    shape = (0, 3) if layout == "empty" else (50, 40)
    w = (0.05 * torch.randn(shape, generator=gen)).to(dtype)
    m = random_mask(shape, dtype=dtype, generator=gen)
    thr = float(w.abs().median()) if w.numel() else 0.0
    w_ref, m_ref = w.clone(), m.clone()
    ref.inq_quantize_(w_ref, m_ref, thr, -6)
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
    ops.inq_quantize_(w, m, thr, -6)
    assert torch.equal(w, w_ref) and torch.equal(m, m_ref)


def _quantize_matches_reference(w: torch.Tensor, n2: int, thr: float = 0.0) -> None:
    m = torch.ones_like(w)
    m[::7] = 0.0
    m[::11] = 2.0
    w_ref, m_ref = w.clone(), m.clone()
    ref.inq_quantize_(w_ref, m_ref, thr, n2)
    ops.inq_quantize_(w, m, thr, n2)
    assert torch.equal(m, m_ref)
    bad = ~((w == w_ref) | (torch.isnan(w) & torch.isnan(w_ref)))
    assert not bool(bad.any()), list(zip(w_ref[bad][:5].tolist(), w[bad][:5].tolist()))


@pytest.mark.parametrize("n2", [-1000, -7, 0])
def test_quantize_float32_every_exponent(n2, gen):
    # The CPU rounds float32 on the bits (inq_round_pow2_bits) and keeps the log form for zeros, subnormals,
    # non-finite values and M = 1.5 exactly. Every exponent, random mantissas, the 1.5 boundary and its
    # neighbours, both signs: the reference (Python's math.log, the C library's) agrees bit for bit.
    exps = torch.arange(-149, 128, dtype=torch.float64).repeat_interleave(40)
    mant = 1 + torch.rand(exps.numel(), generator=gen, dtype=torch.float64)
    vals = (mant * torch.exp2(exps)).float()
    edges = []
    for e in range(-149, 128):
        v = torch.tensor(1.5 * 2.0 ** e, dtype=torch.float32)
        edges += [v, torch.nextafter(v, torch.tensor(0.0)), torch.nextafter(v, torch.tensor(math.inf))]
    specials = torch.tensor([0.0, -0.0, 1e-45, 3e-39, math.inf, -math.inf, math.nan, 3.4e38], dtype=torch.float32)
    w = torch.cat([vals, torch.stack(edges), specials])
    sign = torch.where(torch.rand(w.numel(), generator=gen) < 0.5, -1.0, 1.0).float()
    _quantize_matches_reference(w * sign, n2)


def test_quantize_float64_bits_rule(gen):
    # float64: the bits rule is used unless M is within 2^13 units in the last place of 1.5; check both sides
    # of that band, random mantissas, and exponents up to 2^1023 (where 4|v|/3 overflows to +inf -> 0).
    vals = []
    for e in list(range(-1074, -1000, 3)) + list(range(-60, 60)) + list(range(1000, 1024)):
        base = 1.5 * 2.0 ** e
        ulp = math.ulp(base)
        for d in (0, 1, -1, 2**13, -(2**13), 2**13 + 1, -(2**13) - 1, 2**14, -(2**20), 2**30):
            vals.append(base + d * ulp)
        vals += [(1 + r) * 2.0 ** e for r in torch.rand(4, generator=gen, dtype=torch.float64).tolist()]
    w = torch.tensor([v for v in vals if math.isfinite(v)], dtype=torch.float64)
    _quantize_matches_reference(w, -1100)
    _quantize_matches_reference(-w, -20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_threshold_compared_in_float64(dtype):
    # A threshold between two float32 values: |v| >= thr in float64, as the reference compares.
    v = torch.tensor([0.1, 0.2], dtype=dtype)
    thr = math.nextafter(float(torch.tensor(0.1, dtype=dtype)), 1.0)  # just above the stored 0.1
    m = torch.ones(2, dtype=dtype)
    ops.inq_quantize_(v, m, thr, -10)
    assert m.tolist() == [1.0, 0.0]


def test_quantize_errors():
    w = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="inq_quantize_: weight must be float32 or float64, got Half"):
        ops.inq_quantize_(w.half(), w.half(), 0.0, -7)
    with pytest.raises(RuntimeError, match=r"inq_quantize_: weight and mask must have the same shape, "
                                           r"got \[4, 3\] and \[4\]"):
        ops.inq_quantize_(w, torch.zeros(4), 0.0, -7)


# ---- inq_threshold -------------------------------------------------------------------------------------------

def test_threshold_table():
    w = torch.tensor([0.3, -0.1, 0.5, 0.2, -0.4, 0.0])
    m = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    # |v| over mask == 1, ascending, zeros included: [0, 0.1, 0.2, 0.3, 0.4]
    got = [ops.inq_threshold(w, m, k).item() for k in range(6)]
    assert got == [0.0, pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.4),
                   math.inf]
    t = ops.inq_threshold(w, m, 2)
    assert t.shape == () and t.dtype == w.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous"])
def test_threshold_random_with_ties(dtype, layout, gen):
    w = torch.randint(-20, 21, (30, 17), generator=gen).to(dtype) / 8  # many ties and zeros
    m = random_mask(w.shape, dtype=dtype, generator=gen)
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
    n_yet = int(m.sum())
    for k in (0, 1, n_yet // 3, n_yet - 1, n_yet, n_yet + 5):
        assert ops.inq_threshold(w, m, k).item() == ref.inq_threshold(w, m, k).item()


def _threshold_by_sort(w, m, k):
    # The composite's definition: kthvalue of where(mask == 1, |v|, +inf) (NaN sorts last), +inf past the end.
    if k >= w.numel():
        return math.inf
    key = torch.where(m == 1, w.abs(), torch.full_like(w, math.inf)).reshape(-1)
    return torch.sort(key).values[k].item()


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", ["ties", "continuous"])
def test_threshold_large_selection(dtype, values, gen):
    # Above 2^15 entries the CPU selects by radix (a histogram of the keys' top 16 bits, then the chosen bin):
    # ties, zeros, ±inf, NaN and mask values other than 0/1, at ranks in every region of the order.
    n = 200_003
    if values == "ties":
        w = torch.randint(-3000, 3001, (n,), generator=gen).to(dtype) / 1024
    else:
        w = (torch.randn(n, generator=gen, dtype=torch.float64) * torch.exp2(torch.randint(-30, 30, (n,),
             generator=gen).double())).to(dtype)
    w[::1001] = math.nan
    w[::1003] = math.inf
    w[::1009] = -math.inf
    m = torch.randint(0, 3, (n,), generator=gen).to(dtype)  # 0, 1 and an invalid 2
    n_t = int((m == 1).sum())
    n_nan = int(((m == 1) & torch.isnan(w)).sum())
    for k in (0, 1, 777, n_t // 3, n_t // 2, n_t - n_nan - 1, n_t - 1, n_t, n_t + 10, n - 1, n, n + 5):
        got = ops.inq_threshold(w, m, k).item()
        assert _same(got, _threshold_by_sort(w, m, k)), k
    # The chunking follows the thread count; the answer does not.
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.inq_threshold(w, m, n_t // 2).item()
    finally:
        torch.set_num_threads(old)
    assert one == ops.inq_threshold(w, m, n_t // 2).item()


def test_threshold_large_all_equal(gen):
    # Every key in one bin: the second pass copies all of them.
    w = torch.full((100_000,), -0.375)
    m = torch.ones(100_000)
    assert ops.inq_threshold(w, m, 54_321).item() == 0.375


def test_threshold_errors():
    with pytest.raises(RuntimeError, match="inq_threshold: n_keep must be >= 0, got -1"):
        ops.inq_threshold(torch.zeros(3), torch.ones(3), -1)


# ---- inq_mask_stats and inq_exponent_range (§3.3) -----------------------------------------------------

def test_mask_stats_table():
    w = torch.tensor([0.3, -0.9, 0.5, -0.25, 7.0, 0.1])
    m = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.5, 1.0])
    assert ops.inq_mask_stats(w, m).tolist() == [pytest.approx(0.9), 0.5, 3.0, 2.0, 1.0]
    assert ops.inq_mask_stats(torch.zeros(0), torch.zeros(0)).tolist() == [-1.0, -1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "large"])
def test_mask_stats_random(dtype, layout, gen):
    shape = (400, 300) if layout == "large" else (30, 20)
    w = torch.randn(shape, generator=gen).to(dtype)
    m = torch.randint(0, 3, shape, generator=gen).to(dtype)  # 0, 1 and an invalid 2
    if layout == "noncontiguous":
        w, m = noncontiguous(w), noncontiguous(m)
    assert torch.equal(ops.inq_mask_stats(w, m), ref.inq_mask_stats(w, m))


def test_exponent_range_fresh_model():  # case (b)
    w = torch.tensor([0.9, -0.3, 0.05])  # 4·0.9/3 = 1.2 -> n1 = 0
    assert inq.inq_exponent_range(w, torch.ones(3), 7) == (0, -6)


def test_exponent_range_pruned_model():  # case (a)
    w = torch.tensor([0.9, 0.0, -0.3, 0.0])
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert inq.inq_exponent_range(w, m, 5) == (0, -4)
    assert inq.inq_exponent_range(torch.zeros(4), torch.zeros(4), 7) == (-100, -106)  # all pruned


def test_exponent_range_partly_quantized():  # case (c)
    w = torch.tensor([0.5, -0.25, 0.6, 0.1])
    m = torch.tensor([0.0, 0.0, 1.0, 1.0])
    # n1 = round(log2(0.5)) = −1 and the unquantized max 0.6 has exponent floor(log2(0.8)) = −1.
    assert inq.inq_exponent_range(w, m, 7) == (-1, -7)


@pytest.mark.parametrize("w,m,match", [
    ([1e-9, 0.0], [1.0, 0.0], r"case \(a\), pruned model"),
    ([0.0, 1e-9], [1.0, 1.0], r"case \(b\), fresh model"),
    ([0.5, 0.25], [0.0, 0.0], r"case \(c\), partly quantized model.*none left"),
    ([0.5, 1e-9], [0.0, 1.0], r"case \(c\), partly quantized model"),
    ([0.5, 0.9], [0.0, 1.0], r"case \(c\), hard situation"),
    ([float("inf"), 0.5], [1.0, 1.0], r"an unquantized entry is infinite"),
    ([float("-inf"), 0.5], [0.0, 1.0], r"a quantized entry is infinite"),
])
def test_exponent_range_checks(w, m, match):
    with pytest.raises(inq.INQRangeError, match=match):
        inq.inq_exponent_range(torch.tensor(w), torch.tensor(m), 7)


@pytest.mark.parametrize("m", [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
def test_a_stage_refuses_an_infinite_weight(m):
    # (it raised OverflowError from the exponent's rounding, or from the "every entry quantized" skip)
    with pytest.raises(inq.INQRangeError, match=r"entry is infinite \(a diverged model\?\)"):
        inq.inq_quantize_portion_(torch.tensor([float("inf"), 0.5, 0.25]), torch.tensor(m), (0.0, 0.5), 7)


# ---- a whole stage: inq_quantize_portion_ ------------------------------------------------------------------

def _reference_stage(w, m, p0, p1, n):
    stats = ref.inq_mask_stats(w, m).tolist()
    n1, n2 = inq._exponent_range(stats, n)
    _, n_keep, n_upd = inq.inq_partition_counts(int(stats[2]), p0, p1)
    if n_upd > 0:
        ref.inq_quantize_(w, m, ref.inq_threshold(w, m, n_keep).item(), n2)


def test_portion_stages_readme_example():
    # 10 weights: 30 % of them (the 3 largest) at stage 1, then 60 %, 80 %, 100 %.
    w = torch.tensor([0.9, -0.05, 0.4, -0.7, 0.12, 0.33, -0.21, 0.6, 0.02, -0.08])
    m = torch.ones(10)
    step = inq.inq_quantize_portion_(w, m, (0.0, 0.3), 7)
    assert (step.n1, step.n2, step.n_yet, step.n_init, step.n_keep, step.n_update) == (0, -6, 10, 10, 7, 3)
    assert w[m == 0].tolist() == [1.0, -0.5, 0.5]
    for p0, p1, quantized in ((0.3, 0.6, 6), (0.6, 0.8, 8), (0.8, 1.0, 10)):
        inq.inq_quantize_portion_(w, m, (p0, p1), 7)
        assert int((m == 0).sum()) == quantized
    assert w.tolist() == [1.0, -0.0625, 0.5, -0.5, 0.125, 0.25, -0.25, 0.5, 0.015625, -0.0625]


def test_portion_skips():
    w, m = torch.tensor([0.5, 0.25]), torch.ones(2)
    assert inq.inq_quantize_portion_(w, m, (0.0, 0.0), 7).skipped == "portion"
    assert m.tolist() == [1.0, 1.0]
    step = inq.inq_quantize_portion_(torch.zeros(3), torch.zeros(3), (0.0, 0.5), 7)
    assert (step.skipped, step.n1, step.n2) == ("pruned", -100, -106)
    # everything quantized already (the reference aborts in ComputeQuantumRange): a logged skip
    w, m = torch.tensor([0.5, -0.25, 0.0]), torch.zeros(3)
    step = inq.inq_quantize_portion_(w, m, (0.6, 0.8), 7)
    assert (step.skipped, step.n1, step.n2, step.n_yet) == ("done", -1, -7, 0)
    assert w.tolist() == [0.5, -0.25, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_portion_stages_random_match_reference(dtype, gen):
    w = (0.1 * torch.randn(64, 9, generator=gen)).to(dtype)
    m = random_mask(w.shape, 0.8, dtype=dtype, generator=gen)
    w[m == 0] = 0  # a DNS-pruned model: case (a) at the first stage, (c) afterwards
    w_ref, m_ref = w.clone(), m.clone()
    for p0, p1 in ((0.0, 0.5), (0.5, 0.75), (0.75, 0.875), (0.875, 1.0)):
        inq.inq_quantize_portion_(w, m, (p0, p1), 7)
        _reference_stage(w_ref, m_ref, p0, p1, 7)
        assert torch.equal(w, w_ref) and torch.equal(m, m_ref)
    assert m.sum() == 0


# ---- opcheck ---------------------------------------------------------------------------------------------

def _opcheck_samples(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g, dtype=dtype)
    m = random_mask((6, 5), dtype=dtype, generator=g)
    yield torch.ops.netcompress.inq_mask_stats.default, (w, m), {}
    yield torch.ops.netcompress.inq_threshold.default, (w, m, 3), {}
    yield torch.ops.netcompress.inq_threshold.default, (noncontiguous(w), noncontiguous(m), 1000), {}
    yield torch.ops.netcompress.inq_quantize_.default, (w.clone(), m.clone(), torch.tensor(0.5), -4), {}


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    for op, args, kwargs in _opcheck_samples(dtype):
        torch.library.opcheck(op, args, kwargs)


# ---- CPU / CUDA parity ---------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["aligned", "misaligned"])
def test_cuda_parity(dtype, layout, gen):
    place = misaligned if layout == "misaligned" else (lambda t: t)
    w = (0.1 * torch.randn(500, 300, generator=gen)).to(dtype)
    w[0, :200] = torch.tensor([3.0 * 2.0 ** (k - 2) for k in range(-100, 100)], dtype=dtype)  # boundaries
    w[1, :6] = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-40, -3e-39], dtype=dtype)
    m = torch.randint(0, 3, w.shape, generator=gen).to(dtype)
    m[1, :6] = 1
    wc, mc = place(w.cuda()), place(m.cuda())
    assert torch.equal(ops.inq_mask_stats(wc, mc).cpu(), ops.inq_mask_stats(w, m))
    ones = int((m == 1).sum())
    for k in (0, 1000, 40000, ones - 1, ones, ones + 7, w.numel() - 1, w.numel()):
        assert torch.equal(ops.inq_threshold(wc, mc, k).cpu(), ops.inq_threshold(w, m, k)), k
    thr = ops.inq_threshold(w, m, 20000)
    # The threshold as inq_threshold leaves it (the weight's dtype, on the device), and as a CPU float64.
    for t_dev in (thr.cuda(), thr.double()):
        w_cpu, m_cpu, w_gpu, m_gpu = w.clone(), m.clone(), place(wc.clone()), place(mc.clone())
        ops.inq_quantize_(w_cpu, m_cpu, thr, -160)
        ops.inq_quantize_(w_gpu, m_gpu, t_dev, -160)
        assert torch.equal(w_gpu.cpu(), w_cpu) and torch.equal(m_gpu.cpu(), m_cpu)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_threshold_radix_select(dtype, gen):
    # The CUDA op selects by radix passes over the key bits (cuda/inq_kernels.cuh), the CPU op by a histogram
    # and nth_element: the same order (mask != 1 and NaN sort last), ties, single values and sizes from one
    # element to a multi-block grid.
    cases = []
    for n in (1, 2, 255, 4097, 1_000_003):
        w = (torch.randn(n, generator=gen) * 10.0 ** torch.randint(-6, 3, (n,), generator=gen)).to(dtype)
        m = torch.randint(0, 3, (n,), generator=gen).to(dtype)
        cases.append((w, m))
    n = 70001
    ties = (torch.randint(-3, 4, (n,), generator=gen) * 0.5).to(dtype)
    cases.append((ties, torch.ones(n, dtype=dtype)))
    cases.append((torch.full((n,), 0.25, dtype=dtype), random_mask((n,), dtype=dtype, generator=gen)))
    cases.append((torch.randn(n, generator=gen).to(dtype), torch.zeros(n, dtype=dtype)))
    nan = torch.randn(n, generator=gen).to(dtype)
    nan[::97] = math.nan
    nan[::89] = math.inf
    cases.append((nan, random_mask((n,), dtype=dtype, generator=gen)))
    for w, m in cases:
        n, ones = w.numel(), int((m == 1).sum())
        wc, mc = w.cuda(), m.cuda()
        for k in sorted({0, n // 3, max(ones - 1, 0), ones, n - 1}):
            got, want = ops.inq_threshold(wc, mc, k), ops.inq_threshold(w, m, k)
            assert got.device.type == "cuda" and got.dtype == dtype and got.shape == ()
            assert torch.equal(got.cpu(), want) or (got.isnan().item() and want.isnan().item()), (n, k)
    # Deterministic, and the same on another stream.
    w, m = cases[4][0].cuda(), cases[4][1].cuda()
    first = ops.inq_threshold(w, m, 123456)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        again = ops.inq_threshold(w, m, 123456)
    side.synchronize()
    assert torch.equal(first, again) and torch.equal(first, ops.inq_threshold(w, m, 123456))


@pytest.mark.cuda
def test_cuda_opcheck():
    for op, args, kwargs in _opcheck_samples(torch.float32):
        cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, cuda_args, kwargs)
