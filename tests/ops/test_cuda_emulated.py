"""The CUDA kernels (csrc/cuda/*.cuh) run on the host, emulated, against the CPU ops: no GPU needed.

The CUDA half of the ops has compiled in CI (nvcc) but never run where no GPU is lent. This runs its kernels
through a host emulation of the runtime (cuda_emu/cuda_runtime.h: each block's threads as fibers that meet at
__syncthreads and at warp shuffles; blocks one after another in a chosen order), launched as the op files launch
them (cuda_emu/emulated_ops.cpp: same instantiation, pack width, grid formula, scratch layout and pass schedule),
and asserts what the `cuda`-marked parity tests assert on a GPU: the element-wise ops equal to the CPU ops bit for
bit, the counts and maxima exactly, the float64 sums to rounding; and what the kernels' comments promise: a
reduction gives the same bits whichever block finishes last and in whatever order a block's threads run, the
ticket and the select histogram are left zeroed for the next launch, and no kernel writes outside its arrays or
lets a value beyond them change its result (every array sits between poisoned guards).

Sizes cover one pack, a tail, several blocks and a thread with several packs (a small wave or a capped grid);
"scalar" runs the op's kernel for unaligned pointers. What a host emulation cannot show is listed in
cuda_runtime.h (memory ordering, the instructions nvcc emits: test_cuda_ptx.py checks those, speed).
"""
from __future__ import annotations

import pytest
import torch

from netcompress import ops

from emulated_cuda import EmulationError, Unavailable, build
from op_helpers import random_mask

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INQ_DTYPES = [torch.float32, torch.float64]
SIZES = [1, 3, 5, 33, 255, 1031, 9001]
# seed: the blocks' order; order: the threads' turns in a block; wave: a reduction's most blocks; max_blocks: a
# cap on element-wise grids (so that one thread takes several packs, as on a large tensor).
SCHEDULES = {
    "plain": dict(),
    "reversed": dict(seed=7, order="reverse"),
    "shuffled-wave3": dict(seed=11, order="shuffled", wave=3, max_blocks=3),
    "one-block": dict(seed=5, order="shuffled", wave=1, max_blocks=1),
}
INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
          torch.bfloat16: torch.int16}


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    try:
        emulated = build(tmp_path_factory.mktemp("cuda_emu"))
    except Unavailable as err:
        pytest.skip(str(err))
    yield emulated
    emulated.configure()


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request, emu):
    emu.configure(**SCHEDULES[request.param])
    yield request.param
    emu.configure()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(INT_OF[a.dtype]), b.view(INT_OF[b.dtype]))


class Placed:
    """A copy of `t` (flattened) between 64 bytes of `poison` on each side, 16-byte aligned or, misaligned, one
    element off (the op's scalar-kernel case). check() asserts the guards still hold their bits."""

    def __init__(self, t: torch.Tensor, poison: float, *, misaligned: bool):
        guard = 64 // t.element_size()
        start = guard + int(misaligned)
        self.buf = torch.full((t.numel() + 2 * guard + 1,), poison, dtype=t.dtype)
        self.t = self.buf[start:start + t.numel()]
        self.t.copy_(t.reshape(-1))
        assert t.numel() == 0 or (self.t.data_ptr() % 16 == 0) != misaligned
        self.untouched = self.buf.clone()
        self.start, self.n = start, t.numel()

    def check(self, what: str) -> None:
        for part, ref in ((self.buf[:self.start], self.untouched[:self.start]),
                          (self.buf[self.start + self.n:], self.untouched[self.start + self.n:])):
            assert same_bits(part, ref), f"{what}: a kernel wrote outside its array"


def specials(n: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Normal values with signed zeros, infinities, NaN, a subnormal and ties sprinkled in."""
    x = torch.randn(n, generator=gen, dtype=torch.float64)
    x[::7] = torch.round(x[::7] * 4) / 4  # ties
    marks = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), torch.finfo(dtype).tiny / 4, 1.5, -0.75]
    for k, v in enumerate(marks):
        if 11 * k + 2 < n:
            x[11 * k + 2] = v
    return x.to(dtype)


def layouts(vec: bool):
    return dict(misaligned=not vec)


# ---- DNS ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_dns_elementwise(emu, schedule, dtype, vec, gen):
    for n in SIZES:
        w = specials(n, dtype, gen)
        m = random_mask(n, dtype=dtype, generator=gen)
        soft = torch.rand(n, generator=gen).to(dtype)  # a non-binary mask: every product rounds
        for mask in (m, soft):
            pw, pm = Placed(w, float("nan"), **layouts(vec)), Placed(mask, 1.0, **layouts(vec))
            po = Placed(torch.zeros(n, dtype=dtype), -3.0, **layouts(vec))
            emu.dns_masked_weight(pw.t, pm.t, po.t, vec=vec)
            assert same_bits(po.t, ops.dns_masked_weight(w, mask)), (n, schedule)
            for p, name in ((pw, "w"), (pm, "m"), (po, "out")):
                p.check(name)

        # The mask rule with thresholds given by value, as a float32 and as a float64 on the device.
        for kind, lo_dtype in ((0, torch.float64), (1, torch.float32), (2, torch.float64)):
            low, high = torch.tensor(0.3, dtype=lo_dtype), torch.tensor(0.9, dtype=lo_dtype)
            m3 = m.clone()
            m3[1::9] = 0.5  # values other than 0 and 1 are kept
            pw, pm = Placed(w, float("nan"), **layouts(vec)), Placed(m3, 1.0, **layouts(vec))
            po = Placed(torch.zeros(n, dtype=dtype), -3.0, **layouts(vec))
            emu.dns_update_mask_(pw.t, pm.t, po.t, (kind, 0.3), (kind, 0.9), vec=vec)
            m_cpu, out_cpu = m3.clone(), torch.empty_like(w)
            ops.dns_update_mask_(w, m_cpu, low, high, out_cpu)
            assert same_bits(pm.t, m_cpu) and same_bits(po.t, out_cpu), (n, kind, schedule)
            for p, name in ((pw, "w"), (pm, "m"), (po, "out")):
                p.check(name)

        diff, g = torch.randn(n, generator=gen).to(dtype), specials(n, dtype, gen)
        pd, pm, pg = (Placed(t, v, **layouts(vec)) for t, v in ((diff, 7.0), (soft, 1.0), (g, float("nan"))))
        emu.dns_splice_grad_(pd.t, pm.t, pg.t, vec=vec)
        d_cpu = diff.clone()
        ops.dns_splice_grad_(d_cpu, soft, g)
        assert same_bits(pd.t, d_cpu), (n, schedule)
        for p, name in ((pd, "diff"), (pm, "m"), (pg, "g")):
            p.check(name)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_dns_stats(emu, dtype, vec, gen):
    # Counts exactly, the float64 moments to rounding (the CPU and the kernel add in different orders); the same
    # bits whichever block folds last and however a block's threads take turns, for a given grid.
    for nw, nb in ((1, 0), (5, 3), (1031, 0), (9001, 40), (20000, 300)):
        w, wm = specials(nw, dtype, gen), random_mask(nw, dtype=dtype, generator=gen)
        w[torch.isnan(w) | torch.isinf(w)] = 2.0  # the statistics of finite weights
        b, bm = torch.randn(nb, generator=gen).to(dtype), random_mask(nb, dtype=dtype, generator=gen)
        bias = (b, bm) if nb else (None, None)
        want = ops.dns_stats(w, wm, *bias)
        for wave in (1, 3, 132):
            results = []
            for seed, order in ((0, "forward"), (3, "reverse"), (9, "shuffled")):
                emu.configure(seed=seed, order=order, wave=wave)
                placed = [Placed(t, float("nan"), **layouts(vec)) for t in (w, wm)]
                placed_b = [Placed(t, float("nan"), misaligned=False) for t in (b, bm)] if nb else []
                got = torch.full((4,), -1.0, dtype=torch.float64)
                emu.dns_stats(placed[0].t, placed[1].t, *(p.t for p in placed_b) if nb else (None, None), got,
                              vec=vec)
                for p in placed + placed_b:
                    p.check("dns_stats input")
                results.append(got)
            assert all(same_bits(r, results[0]) for r in results), (nw, nb, wave, results)
            assert torch.equal(results[0][2:], want[2:]), (nw, nb, wave)
            torch.testing.assert_close(results[0], want, rtol=1e-12, atol=0, equal_nan=True)  # no weight kept: NaN
    emu.configure()


# ---- INQ ----------------------------------------------------------------------------------------------------

def inq_mask(n: int, dtype, gen) -> torch.Tensor:
    """1 (to quantize), 0 (quantized) and, at a few places, other values (neither)."""
    m = random_mask(n, p_one=0.6, dtype=dtype, generator=gen)
    m[3::13] = 0.5
    return m


@pytest.mark.parametrize("dtype", INQ_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_inq_mask_stats(emu, schedule, dtype, vec, gen):
    for n in [0] + SIZES:
        w, m = specials(n, dtype, gen), inq_mask(n, dtype, gen)
        pw, pm = Placed(w, 1e30, **layouts(vec)), Placed(m, 1.0, **layouts(vec))
        got = torch.full((5,), -7.0, dtype=torch.float64)
        emu.inq_mask_stats(pw.t, pm.t, got, vec=vec)
        assert same_bits(got, ops.inq_mask_stats(w, m)), (n, schedule, got)
        pw.check("w")
        pm.check("m")


@pytest.mark.parametrize("dtype", INQ_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_inq_threshold(emu, schedule, dtype, vec, gen):
    # The radix select: the n_keep-th smallest |v| among mask == 1 (+inf beyond them, NaN above +inf), exactly
    # as the CPU op, for ranks at the ends, at the edge of the mask-1 entries and beyond, with ties, signed
    # zeros, subnormals, infinities and NaN; 3 passes for float32 keys, 6 for float64.
    passes_wanted = {torch.float32: 3, torch.float64: 6}[dtype]
    for n in SIZES:
        w, m = specials(n, dtype, gen), inq_mask(n, dtype, gen)
        ones = int((m == 1).sum())
        ranks = sorted({0, n // 2, max(ones - 1, 0), min(ones, n - 1), n - 1})
        for n_keep in ranks:
            pw, pm = Placed(w, 0.0, **layouts(vec)), Placed(m, 1.0, **layouts(vec))  # a read beyond shifts ranks
            got = torch.full((), -5.0, dtype=dtype)
            passes = emu.inq_threshold(pw.t, pm.t, n_keep, got, vec=vec)
            want = ops.inq_threshold(w, m, n_keep)
            assert same_bits(got, want), (n, n_keep, schedule, got, want)
            assert passes == passes_wanted
            pw.check("w")
            pm.check("m")
    # Every key equal (+inf: nothing has mask 1), and every key the same finite value.
    for w, m in ((torch.randn(300, generator=gen).to(dtype), torch.zeros(300, dtype=dtype)),
                 (torch.full((300,), -0.375, dtype=dtype), torch.ones(300, dtype=dtype))):
        for n_keep in (0, 150, 299):
            got = torch.empty((), dtype=dtype)
            emu.inq_threshold(w, m, n_keep, got, vec=vec)
            assert same_bits(got, ops.inq_threshold(w, m, n_keep))


@pytest.mark.parametrize("dtype", INQ_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_inq_quantize(emu, schedule, dtype, vec, gen):
    for n in SIZES:
        w, m = specials(n, dtype, gen), inq_mask(n, dtype, gen)
        for (kind, thr_dtype), n2 in zip(((0, torch.float64), (1, torch.float32), (2, torch.float64)),
                                         (-4, 0, -(10 ** 9))):
            thr = 0.7
            pw, pm = Placed(w, 3.0, **layouts(vec)), Placed(m, 1.0, **layouts(vec))
            emu.inq_quantize_(pw.t, pm.t, (kind, thr), n2, vec=vec)
            w_cpu, m_cpu = w.clone(), m.clone()
            ops.inq_quantize_(w_cpu, m_cpu, torch.tensor(thr, dtype=thr_dtype), n2)
            assert same_bits(pw.t, w_cpu) and same_bits(pm.t, m_cpu), (n, kind, n2, schedule)
            pw.check("w")
            pm.check("m")


# ---- quantization and the solver ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_act_quant(emu, schedule, dtype, gen):
    # act_quant and int_quant, forward and straight-through backward; alpha by value and on the device.
    for n in SIZES:
        x = (specials(n, torch.float64, gen) * 3).to(dtype)
        grad = torch.randn(n, generator=gen).to(dtype)
        for kind, a_dtype, alpha in ((0, torch.float64, 0.37), (1, torch.float32, 0.37), (2, torch.float64, 0.0)):
            a = torch.tensor(alpha, dtype=a_dtype)
            for backward in (False, True):
                px, pg = Placed(x, float("nan"), misaligned=False), Placed(grad, float("nan"), misaligned=True)
                po = Placed(torch.zeros(n, dtype=dtype), 9.0, misaligned=True)
                emu.act_quant(px.t, po.t, alpha=(kind, alpha), low=-8, high=7, grad=pg.t if backward else None)
                if backward:
                    want = torch.ops.netcompress._act_quant_backward(grad, x, a, -8.0, 7.0)
                else:
                    want = ops.act_quant(x, a, -8, 7)
                assert same_bits(po.t, want), (n, kind, backward, schedule)
                for p in (px, pg, po):
                    p.check("act_quant")
        for backward in (False, True):
            po = Placed(torch.zeros(n, dtype=dtype), 9.0, misaligned=False)
            emu.act_quant(x, po.t, alpha=None, low=0, high=15, grad=grad if backward else None)
            want = (torch.ops.netcompress._int_quant_backward(grad, x, 0.0, 15.0) if backward
                    else ops.int_quant(x, 0, 15))
            assert same_bits(po.t, want), (n, backward, schedule)
            po.check("int_quant")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_quant_weight(emu, schedule, dtype, gen):
    for rows, cols in ((1, 1), (3, 5), (16, 25), (20, 500)):
        w = (specials(rows * cols, torch.float64, gen) * 0.2).to(dtype).reshape(rows, cols)
        m = random_mask((rows, cols), dtype=dtype, generator=gen)
        alpha = (torch.rand(rows, generator=gen) * 0.05).to(dtype)
        alpha[0] = 0  # a row with alpha 0 gives 0
        for mask in (None, m):
            for dequant in (True, False):
                po = Placed(torch.zeros(rows * cols, dtype=dtype), 9.0, misaligned=True)
                emu.quant_weight(w, mask, alpha, po.t, low=-7, high=7, dequant=dequant)
                op = ops.quant_weight if dequant else ops.quant_weight_codes
                want = op(w, mask, alpha, -7, 7).reshape(-1)
                assert same_bits(po.t, want), (rows, cols, mask is None, dequant, schedule)
                po.check("quant_weight")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("vec", [True, False], ids=["packed", "scalar"])
def test_sgd_momentum_update(emu, schedule, dtype, vec, gen):
    for n in SIZES:
        g, h = torch.randn(n, generator=gen).to(dtype), torch.randn(n, generator=gen).to(dtype)
        m = random_mask(n, dtype=dtype, generator=gen)
        for mask in (None, m):
            pg, ph = Placed(g, float("nan"), **layouts(vec)), Placed(h, float("nan"), **layouts(vec))
            pm = Placed(mask, 1.0, **layouts(vec)) if mask is not None else None
            emu.sgd_momentum_update_(pg.t, ph.t, pm.t if pm else None, 0.9, 0.01, vec=vec)
            g_cpu, h_cpu = g.clone(), h.clone()
            ops.sgd_momentum_update_(g_cpu, h_cpu, mask, 0.9, 0.01)
            assert same_bits(pg.t, g_cpu) and same_bits(ph.t, h_cpu), (n, mask is None, schedule)
            for p in (pg, ph, pm):
                if p is not None:
                    p.check("sgd")


# ---- the emulator itself ------------------------------------------------------------------------------------

def test_emulator_shows_a_missing_barrier(emu):
    # Thread 0 sums what the block wrote to shared memory. Without __syncthreads the sum depends on the threads'
    # turns (thread 0 first: it sees only its own value); with it, every order gives the right sum.
    for order in ("forward", "reverse", "shuffled"):
        emu.configure(order=order, seed=3)
        got, want = emu.shared_sum(synced=True)
        assert got == want
    emu.configure(order="forward")
    got, want = emu.shared_sum(synced=False)
    assert got != want
    emu.configure()


def test_emulator_refuses_undefined_warp_use(emu):
    with pytest.raises(EmulationError, match="lanes had exited"):
        emu.wrong_kernel("exited_lane_shuffle")
    with pytest.raises(EmulationError, match="never reach"):
        emu.wrong_kernel("divergent_barrier")
    # It recovers for the next launch.
    got, want = emu.shared_sum(synced=True)
    assert got == want
