"""lr_policy "epsilon_adaptive" (recipes-spec §3.4, §5.3.1, T4) and the ε-ResNet training callback (T8)."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.recipes.eresnet import EpsilonAdaptiveSchedule, EpsilonResNetCallback
from netcompress.solvers.solver import Solver

CIFAR = """
lr_policy: "epsilon_adaptive" base_lr: 0.1 epoch_iters: 390
adaptive_lr { init { epoch: 0 value: 0.1 } init { epoch: 82 value: 0.01 } init { epoch: 123 value: 0.001 }
              init { epoch: 300 value: 0.0002 }
              reset { epoch: 0 value: 0.1 } reset { epoch: 41 value: 0.01 } reset { epoch: 61 value: 0.001 }
              reset { epoch: 150 value: 0.0002 } threshold: 1 last_k: 1 }
"""

def cifar_solver() -> pb.SolverParameter:
    return text_format.Parse(CIFAR, pb.SolverParameter())


def rates_by_epoch(history, last_epoch: int) -> dict[int, float]:
    """lr during each epoch 1..last_epoch; `history(E)` is discarded_cnt logged at the end of E."""
    sched = EpsilonAdaptiveSchedule(cifar_solver())
    out = {}
    for e in range(1, last_epoch + 1):
        out[e] = sched.rate()          # set at the end of e - 1 (or at the start)
        sched.epoch_end(e, history(e))
    return out


def assert_segments(rates: dict[int, float], segments: list[tuple[int, int, float]]) -> None:
    for first, last, value in segments:
        got = {e: rates[e] for e in range(first, last + 1)}
        assert set(got.values()) == {value}, (first, last, value, got)  # the decimals of the file


def test_no_discards_follows_the_init_schedule():
    rates = rates_by_epoch(lambda e: 3.0, 400)
    assert_segments(rates, [(1, 82, 0.1), (83, 123, 0.01), (124, 300, 0.001), (301, 400, 0.0002)])


def test_a_jump_at_epoch_90_restarts_the_reset_schedule_from_91():
    rates = rates_by_epoch(lambda e: 0.0 if e < 90 else 1.0, 300)
    assert_segments(rates, [(1, 82, 0.1), (83, 90, 0.01), (91, 131, 0.1), (132, 151, 0.01),
                            (152, 240, 0.001), (241, 300, 0.0002)])


def test_a_second_jump_at_epoch_100_restarts_again_from_101():
    rates = rates_by_epoch(lambda e: 0.0 if e < 90 else (1.0 if e < 100 else 2.5), 300)
    assert_segments(rates, [(83, 90, 0.01), (91, 100, 0.1), (101, 141, 0.1), (142, 161, 0.01),
                            (162, 250, 0.001), (251, 300, 0.0002)])


def test_growth_below_threshold_or_a_fall_changes_nothing():
    # +0.99 per epoch never reaches the threshold of 1 between two consecutive epochs.
    rates = rates_by_epoch(lambda e: 0.99 * e if e < 50 else 0.0, 130)
    assert_segments(rates, [(1, 82, 0.1), (83, 123, 0.01), (124, 130, 0.001)])


def test_growth_during_epoch_1_is_not_seen():
    # tensorpack needs last_k + 1 epochs of history: the count at the end of epoch 1 has no predecessor.
    rates = rates_by_epoch(lambda e: 5.0, 90)
    assert_segments(rates, [(1, 82, 0.1), (83, 90, 0.01)])


def test_last_k_window_and_the_rate_through_the_callback():
    sp = cifar_solver()
    sp.adaptive_lr.last_k = 3
    sched = EpsilonAdaptiveSchedule(sp)
    hist = {1: 0, 2: 0, 3: 0.5, 4: 0.9, 5: 1.2}   # +1.2 over the window [h2..h5] at epoch 5
    for e in range(1, 6):
        sched.epoch_end(e, hist[e])
        if e < 5:
            assert sched.rate() == 0.1
    assert sched.last_changed == 5 and sched.rate() == 0.1
    sched.epoch_end(6, 1.2)
    assert sched.rate() == 0.1
    # the callback's rate is the schedule's, then the fork's warm-up and min_lr
    cb = EpsilonResNetCallback()
    cb.schedule = sched
    sp.rampup_interval, sp.rampup_lr = 400, 0.02
    assert cb.learning_rate(SimpleNamespace(param=sp, iter=100), 0.0) == pytest.approx(0.02 + 0.08 / 4)
    assert cb.learning_rate(SimpleNamespace(param=sp, iter=2340), 0.0) == 0.1
    sp.min_lr = 0.5
    assert cb.learning_rate(SimpleNamespace(param=sp, iter=2340), 0.0) == 0.5


def test_without_an_epoch_0_entry_the_base_lr_holds():
    sp = text_format.Parse('base_lr: 0.3 lr_policy: "epsilon_adaptive" adaptive_lr { '
                           'init { epoch: 2 value: 0.01 } reset { epoch: 0 value: 0.1 } }', pb.SolverParameter())
    s = EpsilonAdaptiveSchedule(sp)
    assert s.rate() == 0.3
    s.epoch_end(1, 0)
    assert s.rate() == 0.3
    s.epoch_end(2, 0)
    assert s.rate() == 0.01


def test_state_round_trip():
    a = EpsilonAdaptiveSchedule(cifar_solver())
    for e in range(1, 95):
        a.epoch_end(e, 0.0 if e < 90 else 1.0)
    b = EpsilonAdaptiveSchedule(cifar_solver())
    b.load_state_dict(a.state_dict())
    for e in range(95, 200):
        a.epoch_end(e, 1.0)
        b.epoch_end(e, 1.0)
        assert a.rate() == b.rate()


@pytest.mark.parametrize("text,match", [
    ('lr_policy: "epsilon_adaptive"', "needs an adaptive_lr"),
    ('lr_policy: "epsilon_adaptive" adaptive_lr { init { epoch: 0 value: 0.1 } }', "reset"),
    ('lr_policy: "epsilon_adaptive" adaptive_lr { reset { epoch: 0 value: 0.1 } monitor: "x" }', "monitor"),
    ('lr_policy: "epsilon_adaptive" adaptive_lr { reset { epoch: 0 } }', "needs epoch and value"),
])
def test_bad_adaptive_lr_blocks_name_the_file(text, match):
    with pytest.raises(NetcompressError, match=match) as e:
        EpsilonAdaptiveSchedule(text_format.Parse(text, pb.SolverParameter()), "s.prototxt")
    assert "s.prototxt" in str(e.value)


# ------------------------------------------------------------------------------------------------
# The callback in a real Solver
# ------------------------------------------------------------------------------------------------

def _block(name: str, bottom: str, eps: str, start: int) -> str:
    return f"""
layer {{ name: "{name}_fc" type: "InnerProduct" bottom: "{bottom}" top: "{name}_F"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "{name}_gate" type: "StrictIdentity" bottom: "{name}_F" top: "{name}_gF"
        strict_identity_param {{ epsilon: {eps} epsilon_start_epoch: {start} }} }}
layer {{ name: "{name}" type: "Eltwise" bottom: "{name}_gF" bottom: "{bottom}" top: "{name}" }}
"""


def tiny_net(eps: str = "1e6", start: int = 2) -> str:
    return ("""
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "fc0" type: "InnerProduct" bottom: "data" top: "fc0"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
""" + _block("b1", "fc0", eps, start) + _block("b2", "b1", eps, start) + """
layer { name: "out" type: "InnerProduct" bottom: "b2" top: "out"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
""")


def tiny_solver(tmp_path, **kw) -> pb.SolverParameter:
    sp = text_format.Parse("""
lr_policy: "epsilon_adaptive" base_lr: 0.5 momentum: 0.9 weight_decay: 0.001 display: 1
max_iter: 30 epoch_iters: 5 random_seed: 3 snapshot_after_train: false
adaptive_lr { init { epoch: 0 value: 0.1 } init { epoch: 2 value: 0.05 }
              reset { epoch: 0 value: 0.2 } reset { epoch: 1 value: 0.02 } }
""", pb.SolverParameter())
    text_format.Parse(tiny_net(**kw.pop("net", {})), sp.net_param)
    sp.snapshot_prefix = str(tmp_path / "tiny")
    for k, v in kw.items():
        setattr(sp, k, v)
    return sp


def logged_rates(records) -> dict[int, float]:
    out = {}
    for r in records:
        m = re.match(r"Iteration (\d+), lr = (\S+)$", r.getMessage())
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def test_solver_logs_discards_and_restarts_the_schedule(tmp_path, caplog):
    # epsilon 1e6 from epoch 3 (epsilon_start_epoch 2): both gates close, discarded_cnt jumps by ~2.
    solver = Solver(tiny_solver(tmp_path), verbose=False)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        solver.solve()
    rates = logged_rates(caplog.records)
    expect = {**{i: 0.1 for i in range(10)}, **{i: 0.05 for i in range(10, 15)},
              **{i: 0.2 for i in range(15, 20)}, **{i: 0.02 for i in range(20, 30)}}
    assert rates == pytest.approx(expect, rel=1e-6)
    msgs = [r.getMessage() for r in caplog.records]
    i3 = msgs.index("Epoch 3 done (iteration 15, 5 iterations per epoch)")
    block = msgs[i3 + 1:i3 + 5]
    # indicator 0 for steps 0..9, 1 for steps 10..14: ema = 1 - prod of the decays (1+t)/(10+t)
    ema = 1 - np.prod([(1 + t) / (10 + t) for t in range(10, 15)])
    assert block[0] == block[1].replace("b2", "b1") == "b1_gate/is_discarded: {:.5g}".format(ema)
    cnt = float(block[2].split(": ")[1])
    assert block[2].startswith("discarded_cnt: ") and cnt == pytest.approx(2 * ema, rel=1e-4)
    assert block[3] == "discarded_ratio: {:.5g}".format(cnt / 2)
    assert "b1_gate/is_discarded: 0" in msgs
    assert sum(m.startswith("Epoch ") and " done (iteration " in m for m in msgs) == 6


def test_resume_keeps_the_adaptive_schedule(tmp_path, caplog):
    sp = tiny_solver(tmp_path)
    sp.snapshot = 20
    Solver(sp, verbose=False).solve()
    resumed = Solver(tiny_solver(tmp_path), verbose=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netcompress"):
        resumed.solve(resume_file=str(tmp_path / "tiny_iter_20.solverstate"))
    rates = logged_rates(caplog.records)
    assert rates == pytest.approx({i: 0.02 for i in range(20, 30)}, rel=1e-6)
    gate = resumed.net.layer("b1_gate")
    assert gate.epochs_done == 6 and gate.ema > 0.999


def test_epoch_length_is_required_when_it_cannot_be_derived(tmp_path):
    sp = tiny_solver(tmp_path)
    sp.epoch_iters = 0   # DummyData has no record count
    with pytest.raises(NetcompressError, match=r"<SolverParameter>: lr_policy \"epsilon_adaptive\" needs the epoch "
                                               r"length.*set epoch_iters"):
        Solver(sp, verbose=False)
    sp.lr_policy = "fixed"
    for lp in sp.net_param.layer:
        if lp.type == "StrictIdentity":
            lp.strict_identity_param.epsilon_start_epoch = 0
    Solver(sp, verbose=False)  # only monitoring is lost: a warning, no error


def test_weight_decay_alone_moves_a_discarded_block(tmp_path):
    """T8: one step with g = 0 changes the block's weights by exactly -lr*wd*w (CAFFE form)."""
    sp = tiny_solver(tmp_path, net={"start": 0}, lr_policy="fixed", base_lr=0.1, weight_decay=0.01,
                     max_iter=1)
    solver = Solver(sp, verbose=False)
    w0 = solver.net.layer("b1_fc").weight.detach().clone()
    other0 = solver.net.layer("out").weight.detach().clone()
    solver.step(1)
    assert solver.net.layer("b1_gate").last_gate == 0.0
    lr, wd = torch.tensor(0.1, dtype=torch.float32), torch.tensor(0.01, dtype=torch.float32)
    assert torch.equal(solver.net.layer("b1_fc").weight.detach(), w0 - lr * (wd * w0))
    assert not torch.allclose(solver.net.layer("out").weight.detach(), other0 - lr * (wd * other0))


def test_epoch_length_is_derived_from_the_first_train_data_layer(tmp_path, lmdb_writer):
    db = tmp_path / "digits_lmdb"
    lmdb_writer(db, np.zeros((10, 1, 4, 4), np.uint8), np.arange(10) % 3)
    sp = tiny_solver(tmp_path)
    sp.epoch_iters = 0
    data = sp.net_param.layer[0]
    data.Clear()
    text_format.Parse(f'name: "data" type: "Data" top: "data" top: "label" '
                      f'data_param {{ source: "{db}" batch_size: 4 backend: LMDB }}', data)
    solver = Solver(sp, verbose=False)
    assert solver.epoch_iters == 3   # ceil(10 / 4), PyTorch's drop_last=False
    assert any(isinstance(cb, EpsilonResNetCallback) for cb in solver.callbacks)
