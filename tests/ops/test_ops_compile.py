"""The ops under torch.compile and on meta tensors (shape inference for the net builder)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from netcompress import ops


def test_meta_shapes():
    w = torch.empty(20, 1, 5, 5, device="meta")
    assert ops.dns_masked_weight(w, w).shape == (20, 1, 5, 5)
    assert ops.dns_stats(w, w, torch.empty(20, device="meta"), torch.empty(20, device="meta")).shape == (4,)
    assert ops.inq_mask_stats(w, w).dtype == torch.float64
    assert ops.inq_threshold(w, w, 3).shape == ()
    ops.dns_update_mask_(w, w.clone(), 0.1, 0.2, torch.empty_like(w))  # mutating ops accept meta too
    ops.dns_splice_grad_(w.clone(), w, w)
    y, ind = ops.max_pool2d(torch.empty(2, 3, 32, 32, device="meta"), (3, 3), (2, 2), (0, 0), True)
    assert y.shape == ind.shape == (2, 3, 16, 16) and ind.dtype == torch.int64
    y, _ = ops.max_pool2d(torch.empty(2, 3, 7, 9, device="meta"), (3, 3), (2, 2), (1, 1), False)
    assert y.shape == (2, 3, 4, 5)


def _dns_step(x, w, mask, b):
    # One DNS layer's TRAIN forward: surgery (mutates the mask), then conv with the masked weight.
    low, high = ops.dns_thresholds(ops.dns_stats(w, mask), c_rate=0.5)
    ops.dns_update_mask_(w, mask, low, high, torch.empty_like(w))
    return F.relu(F.conv2d(x, ops.dns_masked_weight(w, mask), b))


def test_compile_smoke():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 12, generator=g)
    w = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
    b = torch.zeros(8)
    m_eager, m_comp = torch.ones_like(w), torch.ones_like(w)

    y_eager = _dns_step(x, w, m_eager, b)
    y_eager.sum().backward()
    grad_eager, w.grad = w.grad, None

    # aot_eager traces through the fake kernels, functionalizes the mutation and runs the autograd
    # formula; inductor passes too but costs ~25 s of code generation on a 2-core CPU.
    compiled = torch.compile(_dns_step, backend="aot_eager", fullgraph=True)
    y_comp = compiled(x, w, m_comp, b)
    y_comp.sum().backward()

    assert torch.equal(m_comp, m_eager) and 0 < m_comp.sum() < m_comp.numel()  # the mutation happened
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(w.grad, grad_eager)
