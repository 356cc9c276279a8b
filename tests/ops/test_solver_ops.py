"""sgd_momentum_update_ (reference-semantics §4.4, §3.6, Decision 5)."""
from __future__ import annotations

import pytest
import torch

from netcompress import ops
from netcompress.ops import reference as ref

from op_helpers import misaligned, noncontiguous, random_mask

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def test_sgd_table():
    g = torch.tensor([1.0, 2.0, -4.0], dtype=torch.float64)
    h = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
    ops.sgd_momentum_update_(g, h, None, 0.9, 0.1)
    expected = [0.9 * 0.5 + 0.1 * 1.0, 0.9 * -1.0 + 0.1 * 2.0, 0.9 * 0.25 + 0.1 * -4.0]
    assert h.tolist() == expected and g.tolist() == expected


def test_sgd_frozen_entries_get_zero_update_and_history():
    g = torch.tensor([1.0, 2.0, -4.0])
    h = torch.tensor([0.5, -1.0, 0.25])
    mask = torch.tensor([1.0, 0.0, 0.0])
    ops.sgd_momentum_update_(g, h, mask, 0.9, 0.1)
    assert g.tolist() == h.tolist() == [pytest.approx(0.55), 0.0, 0.0]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "noncontiguous", "empty", "nomask"])
def test_sgd_random(dtype, layout, gen):
    shape = (0, 4) if layout == "empty" else (33, 17)
    g = torch.randn(shape, generator=gen).to(dtype)
    h = torch.randn(shape, generator=gen).to(dtype)
    mask = None if layout == "nomask" else random_mask(shape, dtype=dtype, generator=gen)
    g_ref, h_ref = g.clone(), h.clone()
    ref.sgd_momentum_update_(g_ref, h_ref, mask, 0.9, 0.01)
    if layout == "noncontiguous":
        g, h, mask = noncontiguous(g), noncontiguous(h), noncontiguous(mask)
    ops.sgd_momentum_update_(g, h, mask, 0.9, 0.01)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


def test_sgd_on_parameter_gradient():
    # The solver hands in a leaf parameter's .grad; no autograd involvement.
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    h = torch.zeros(3)
    ops.sgd_momentum_update_(p.grad, h, torch.tensor([1.0, 1.0, 0.0]), 0.9, 0.5)
    assert p.grad.tolist() == [1.0, 1.0, 0.0]


def test_sgd_errors():
    g = torch.zeros(5, 2)
    with pytest.raises(RuntimeError, match=r"sgd_momentum_update_: grad and mask must have the same shape, "
                                           r"got \[5, 2\] and \[5\]"):
        ops.sgd_momentum_update_(g, torch.zeros(5, 2), torch.zeros(5), 0.9, 0.1)


def test_opcheck():
    g = torch.Generator().manual_seed(0)
    grad, hist = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    mask = random_mask((4, 3), generator=g)
    op = torch.ops.netcompress.sgd_momentum_update_.default
    torch.library.opcheck(op, (grad, hist, mask, 0.9, 0.1))
    torch.library.opcheck(op, (grad, hist, None, 0.0, 1.0))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("n", [30000, 8 * 1001 + 5])
@pytest.mark.parametrize("layout", ["aligned", "misaligned"])
def test_cuda_parity(dtype, n, layout, gen):
    # Bit for bit: neither build fuses momentum·h + rate·g into an FMA (kernels/solver.h), so the CUDA kernel
    # rounds each product and the sum as the CPU loop does. Sizes with a tail past the 16-byte packs; a
    # misaligned layout runs the scalar kernel.
    place = misaligned if layout == "misaligned" else (lambda t: t)
    for with_mask in (True, False):
        g = torch.randn(n, generator=gen).to(dtype)
        h = torch.randn(n, generator=gen).to(dtype)
        mask = random_mask(g.shape, dtype=dtype, generator=gen) if with_mask else None
        gc, hc = place(g.cuda()), place(h.cuda())
        mc = place(mask.cuda()) if with_mask else None
        ops.sgd_momentum_update_(g, h, mask, 0.9, 0.01)
        ops.sgd_momentum_update_(gc, hc, mc, 0.9, 0.01)
        assert torch.equal(hc.cpu(), h) and torch.equal(gc.cpu(), g)
        if with_mask:
            assert torch.equal((hc == 0).cpu() | (mask == 1), torch.ones_like(mask, dtype=torch.bool))
