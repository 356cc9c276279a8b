"""The step modes on a GPU (marker `cuda`; solvers/step.py): a CUDA-graphed run equals an ungraphed (deferred) one
on the same device bit for bit (same seed, deterministic algorithms), the graph is the default where it applies
and the solver says so, a graphed or deferred step holds no host synchronization, and the non-finite stop works
through the graph. The CPU tests of the same logic are in test_step_modes.py."""
from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at its first use)

import logging  # noqa: E402
import re  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from netcompress.solvers import NonFiniteLossError, Solver  # noqa: E402
from test_step_modes import (VALUE_LINES, _bits_equal, _nan_param, _state, solver_param,  # noqa: E402,F401
                             workdir)

pytestmark = pytest.mark.cuda


@pytest.fixture
def deterministic():
    old = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(old[0])
    torch.backends.cudnn.benchmark = old[1]


def _run(sp, options, caplog, iters=None):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s = Solver(sp, device="cuda", verbose=False, options=options)
        if iters is None:
            s.solve()
        else:
            s.step(iters)
    lines = []
    for r in caplog.records:
        m = VALUE_LINES.search(r.getMessage())
        if m:
            text = re.sub(r" \([\d.e+-]+ iter/s, [\d.]+s/\d+ iters\)", "", m.group(1))
            lines.append(text.replace(sp.snapshot_prefix, "<prefix>"))
    return s, lines, caplog.text


@pytest.mark.parametrize("variant", ["plain", "dns", "inq"])
def test_graphed_run_equals_ungraphed(workdir, variant, caplog, deterministic):
    # A Data layer (run eagerly, its tops copied into the graph), DNS surgery decided on the host before each
    # replay, INQ freezing in the captured update; display, tests and snapshots between replays.
    ungraphed, lines_u, _ = _run(solver_param(workdir, variant, "deferred", dropout=False), {"step_mode": "deferred"},
                                 caplog)
    graphed, lines_g, text = _run(solver_param(workdir, variant, "graph", dropout=False), {}, caplog)
    assert ungraphed.step_mode == "deferred" and graphed.step_mode == "graph"
    assert "Training step: CUDA graph" in text and "the default where it applies" in text
    assert "capture failed" not in text
    assert graphed._loop.graph is not None
    assert lines_g == lines_u
    a, b = _state(ungraphed), _state(graphed)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])
    for it in (5, 10, 12):
        assert ((workdir / f"deferred_{variant}_iter_{it}.caffemodel").read_bytes()
                == (workdir / f"graph_{variant}_iter_{it}.caffemodel").read_bytes())


@pytest.mark.parametrize("mode", ["graph", "deferred"])
def test_step_holds_no_host_sync(workdir, mode):
    # Between host reads (none here but the end of step()) an iteration synchronizes nothing.
    sp = solver_param(workdir, "dns", mode, dropout=False, display=0, test_interval=0, snapshot=0,
                      epoch_iters=1000, max_iter=100)
    del sp.test_iter[:]
    s = Solver(sp, device="cuda", verbose=False, options={"step_mode": mode})
    s.step(5)  # warm-up and capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            s.step(20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [x for x in w if "synchroniz" in str(x.message).lower()]
    assert len(syncs) <= 1, [f"{x.filename}:{x.lineno}" for x in syncs]  # the one read at the end of step()


def test_graphed_non_finite_stop_matches_ungraphed(workdir, caplog):
    results = {}
    for mode in ("deferred", "graph"):
        s = Solver(_nan_param(workdir, mode, display=0, snapshot=0, epoch_iters=100), device="cuda", verbose=False,
                   options={"step_mode": mode})
        with pytest.raises(NonFiniteLossError) as e:
            s.step(40)
        results[mode] = (str(e.value), s.iter, _state(s))
    (msg_u, it_u, st_u), (msg_g, it_g, st_g) = results["deferred"], results["graph"]
    assert msg_g == msg_u and it_g == it_u
    assert _bits_equal(st_u[0], st_g[0]) and _bits_equal(st_u[1], st_g[1])


def test_a_layer_that_refuses_keeps_the_step_ungraphed(workdir, caplog):
    s, _, text = _run(solver_param(workdir, "plain", "drop", max_iter=4, snapshot=0), {}, caplog, iters=4)
    assert s.step_mode == "deferred"
    assert "no CUDA graph: layer 'drop' (type Dropout) draws from its own generator" in text
