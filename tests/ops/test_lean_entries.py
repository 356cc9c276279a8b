"""The lean C++ entries (csrc/lean_entries.cpp): the same results, gradients, errors and dispatch as
torch.ops.netcompress.<op>, for every kind of argument the entries serve or hand on."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.overrides import TorchFunctionMode

from netcompress import _C, ops

from op_helpers import noncontiguous, random_mask

BOXED = torch.ops.netcompress
LEAN_OPS = ["dns_masked_weight", "to_channels_last", "to_contiguous"]
GIL_KEPT_BELOW = 1 << 15  # csrc/lean_entries.cpp: kKeepGilBelow


def _args(name, n, dtype, gen, *, device="cpu"):
    """Arguments for `name` with about n elements: a (4, C, 8, 8) tensor, C = n / 256 (at least 1)."""
    shape = (4, max(1, n // 256), 8, 8)
    x = torch.randn(shape, generator=gen).to(dtype).to(device)
    if name == "dns_masked_weight":
        return x, random_mask(shape, dtype=dtype, generator=gen).to(device)
    return (x.contiguous(memory_format=torch.channels_last),) if name == "to_contiguous" else (x,)


@pytest.mark.parametrize("name", LEAN_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("n", [16, 4096, 2 * GIL_KEPT_BELOW])  # with the GIL kept, and released
def test_same_values_as_torch_ops(name, dtype, n, gen):
    args = _args(name, n, dtype, gen)
    lean, boxed = getattr(_C, name)(*args), getattr(BOXED, name)(*args)
    assert lean.dtype == boxed.dtype and lean.shape == boxed.shape and lean.stride() == boxed.stride()
    assert torch.equal(lean, boxed)
    assert all(lean.data_ptr() != a.data_ptr() for a in args)  # a new tensor, as the schema says


@pytest.mark.cuda
@pytest.mark.parametrize("name", LEAN_OPS)
def test_cuda_same_values_as_torch_ops(name, gen):
    for n in (16, 2 * GIL_KEPT_BELOW):
        args = _args(name, n, torch.float32, gen, device="cuda")
        lean, boxed = getattr(_C, name)(*args), getattr(BOXED, name)(*args)
        assert lean.device.type == "cuda" and lean.stride() == boxed.stride() and torch.equal(lean, boxed)


def test_noncontiguous_and_meta_and_parameters(gen):
    w, m = torch.randn(6, 10, generator=gen), random_mask((6, 10), generator=gen)
    assert torch.equal(_C.dns_masked_weight(noncontiguous(w), noncontiguous(m)), w * m)
    meta = torch.empty(20, 1, 5, 5, device="meta")
    assert _C.dns_masked_weight(meta, meta).shape == (20, 1, 5, 5)
    assert _C.to_channels_last(meta).is_contiguous(memory_format=torch.channels_last)
    p = torch.nn.Parameter(w.clone())  # a Parameter is served as a tensor, with its autograd
    (_C.dns_masked_weight(p, m) * 3).sum().backward()
    assert torch.equal(p.grad, torch.full_like(w, 3.0))  # splicing: the gradient reaches W unmasked


def test_autograd_graph_is_the_ops(gen):
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    m = random_mask((4, 3), dtype=torch.float64, generator=gen)
    y = ops.dns_masked_weight(w, m)
    assert y.requires_grad and y.grad_fn is not None
    c = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    (y * c).sum().backward()
    assert torch.equal(w.grad, c)
    with torch.no_grad():
        assert not ops.dns_masked_weight(w, m).requires_grad


def _error(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value).split("\n")[0]


@pytest.mark.parametrize("args", [
    "too_few", "too_many", "not_a_tensor", "shape", "dtype",
])
def test_bad_arguments_fail_as_torch_ops(args):
    w = torch.zeros(20, 1, 5, 5)
    call = {
        "too_few": (w,), "too_many": (w, w, w), "not_a_tensor": (w, 1.0),
        "shape": (w, torch.zeros(20, 1, 5)), "dtype": (w, w.double()),
    }[args]
    lean = _error(_C.dns_masked_weight, *call)
    assert lean == _error(BOXED.dns_masked_weight, *call)
    assert "dns_masked_weight" in lean[1]


def test_keywords_are_handed_to_torch_ops(gen):
    w, m = torch.randn(5, generator=gen), random_mask((5,), generator=gen)
    assert torch.equal(_C.dns_masked_weight(weight=w, mask=m), w * m)
    assert torch.equal(_C.dns_masked_weight(w, mask=m), w * m)
    assert _error(_C.dns_masked_weight, w, bias=m) == _error(BOXED.dns_masked_weight, w, bias=m)


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _Tagged(torch.Tensor):
    """A subclass whose __torch_function__ records what reached it."""
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_torch_function_modes_and_subclasses_see_the_op(gen):
    w, m = torch.randn(5, generator=gen), random_mask((5,), generator=gen)
    with _Recorder() as rec:
        out = ops.dns_masked_weight(w, m)
    assert torch.equal(out, w * m)
    assert [str(f) for f in rec.seen] == [str(BOXED.dns_masked_weight)]
    _Tagged.seen = []
    out = ops.dns_masked_weight(w.as_subclass(_Tagged), m)
    assert type(out) is _Tagged and BOXED.dns_masked_weight in _Tagged.seen


def test_profiler_records_the_op(gen):
    x = torch.randn(2, 3, 4, 4, generator=gen)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ops.to_channels_last(x)
        ops.dns_masked_weight(x, x)
    names = {e.name for e in prof.events()}
    assert {"netcompress::to_channels_last", "netcompress::dns_masked_weight"} <= names


def test_large_calls_let_other_threads_run(gen):
    # Above the threshold the entry releases the GIL around the kernel, so a Python thread runs during the call.
    # Held, the thread could run only after the call returns (C code is never asked to drop the GIL): its
    # timestamps inside a call would then cover at most a switch interval (5 ms) of a 30+ ms call.
    x = torch.randn(16, 64, 128, 128, generator=gen)  # 16.8M floats: tens of milliseconds
    stamps, go, stop = [], threading.Event(), threading.Event()

    def spin():
        go.wait()
        while not stop.is_set():
            stamps.append(time.perf_counter())

    covered = []
    for _ in range(3):
        stamps.clear(), go.clear(), stop.clear()
        t = threading.Thread(target=spin)
        t.start()
        go.set()
        t0 = time.perf_counter()
        y = _C.to_channels_last(x)
        t1 = time.perf_counter()
        stop.set()
        t.join()
        inside = [s for s in stamps if t0 < s < t1]
        covered.append((inside[-1] - inside[0]) / (t1 - t0) if len(inside) > 1 else 0.0)
        if covered[-1] > 0.5:
            break
    assert torch.equal(y, x.contiguous(memory_format=torch.channels_last))
    assert max(covered) > 0.5, f"a Python thread ran during {covered} of the calls"


def test_compiled_wrappers_trace_the_boxed_op(gen):
    # Dynamo cannot trace into the C++ entry: under torch.compile the wrappers call torch.ops, with no graph break.
    w, m = torch.randn(4, 3, 2, 2, generator=gen), random_mask((4, 3, 2, 2), generator=gen)

    def f(w, m):
        return ops.to_contiguous(ops.to_channels_last(ops.dns_masked_weight(w, m)))

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(w, m), w * m)


def test_make_fx_and_export_record_the_ops(gen):
    # Tracers that work below Dynamo (a dispatch mode: make_fx) or through it (torch.export) see the ops themselves.
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(w, m):
        return ops.to_channels_last(ops.dns_masked_weight(w, m).reshape(2, 3, 2, 2))

    w, m = torch.randn(24, generator=gen), random_mask((24,), generator=gen)
    want = ["netcompress.dns_masked_weight.default", "netcompress.to_channels_last.default"]
    for mode in ("real", "fake"):
        g = make_fx(f, tracing_mode=mode)(w, m)
        assert [str(n.target) for n in g.graph.nodes if str(n.target).startswith("netcompress.")] == want

    class M(torch.nn.Module):
        def forward(self, w, m):
            return f(w, m)

    ep = torch.export.export(M(), (w, m))
    assert [str(n.target) for n in ep.graph.nodes if str(n.target).startswith("netcompress.")] == want
    assert torch.equal(ep.module()(w, m), f(w, m))
