"""The solver's step modes (solvers/step.py) on the CPU: the deferred mode (the loss stays on the device until
a display, test, epoch or snapshot point; a device flag guards the update) gives the eager mode's log values,
weights and history bit for bit, stops at the same non-finite iteration with the same files, and the mode is
chosen and refused as documented. The CUDA-graph mode itself is tested under the `cuda` marker
(test_step_cuda.py); what it shares with the deferred mode is tested here."""
from __future__ import annotations

import logging
import math
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from netcompress import io as ncio
from netcompress.cli import main as cli_main
from netcompress.errors import NetcompressError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import NonFiniteLossError, Solver
from netcompress.solvers import step as step_module
from netcompress.solvers.callbacks import AfterIteration, TrainingCallback
from netcompress.solvers.step import choose_step_mode, graph_refusal

import small_net
from small_net import workdir  # noqa: F401 (workdir: a fixture)

# The lines whose values the modes must share: display (speed figures removed), outputs, lr, tests.
VALUE_LINES = re.compile(r"(Iteration \d+(?: \(.*\))?, loss = \S+|Train net output #\d+: .*|Iteration \d+, lr = \S+|"
                         r"Test net output #\d+: .*|Iteration \d+, Testing net \(#\d+\)|Snapshotting to .*|"
                         r"Epoch \d+ done.*)$")


def solver_param(workdir, variant="plain", prefix="run", dropout=True, **kw) -> pb.SolverParameter:
    """The shared small net with its conv bias free of weight decay (the step modes' own variant)."""
    return small_net.solver_param(workdir, variant, prefix, dropout, conv_bias_decay=False, **kw)


def _solve(sp, mode, caplog) -> tuple[Solver, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s = Solver(sp, verbose=False, options={"step_mode": mode})
        s.solve()
    lines = []
    for r in caplog.records:
        m = VALUE_LINES.search(r.getMessage())
        if m:
            text = re.sub(r" \([\d.e+-]+ iter/s, [\d.]+s/\d+ iters\)", "", m.group(1))
            lines.append(text.replace(f"{sp.snapshot_prefix}", "<prefix>"))
    return s, lines


def _state(s: Solver):
    """(the train net's parameters and buffers (masks), the solver's history), copied."""
    return ([t.detach().clone() for t in [*s.net.parameters(), *s.net.buffers()]],
            [h.clone() for hs in s.history for h in hs])


def _bits_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Same tensors bit for bit (-0.0 is not 0.0, a NaN equals the same NaN)."""
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and
                                    torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("variant", ["plain", "dns", "inq"])
def test_deferred_equals_eager(workdir, variant, caplog):
    # Display every 2, test every 4, snapshot every 5, Dropout's own generator, DNS surgery, INQ freezing.
    eager, eager_lines = _solve(solver_param(workdir, variant, "eager"), "eager", caplog)
    deferred, deferred_lines = _solve(solver_param(workdir, variant, "deferred"), "deferred", caplog)
    assert eager.step_mode == "eager" and deferred.step_mode == "deferred"
    assert "Training step: deferred" in caplog.text
    assert deferred_lines == eager_lines
    assert sum("loss = " in l and "output" not in l for l in eager_lines) == 7  # iterations 0, 2, ..., 12
    assert eager.smoothed_loss == deferred.smoothed_loss
    a, b = _state(eager), _state(deferred)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])
    for it in (5, 10, 12):
        assert ((workdir / f"eager_{variant}_iter_{it}.caffemodel").read_bytes()
                == (workdir / f"deferred_{variant}_iter_{it}.caffemodel").read_bytes())
        ha = pb.SolverState.FromString((workdir / f"eager_{variant}_iter_{it}.solverstate").read_bytes()).history
        hb = pb.SolverState.FromString((workdir / f"deferred_{variant}_iter_{it}.solverstate").read_bytes()).history
        assert [h.SerializeToString() for h in ha] == [h.SerializeToString() for h in hb]


@pytest.mark.parametrize("kw", [
    dict(momentum_form=pb.SolverParameter.LR_OUTSIDE, iter_size=2, average_loss=3),
    dict(regularization_type="L1", epoch_iters=3, average_loss=4, display=3),
])
def test_deferred_equals_eager_other_forms(workdir, kw, caplog):
    # LR_OUTSIDE (the rate outside the history), iter_size 2 (gradients averaged), L1 decay, epoch ends,
    # Caffe's smoothing window: all in the deferred update and the host read, same bits as eager.
    eager, eager_lines = _solve(solver_param(workdir, "dns", "eager", **kw), "eager", caplog)
    deferred, deferred_lines = _solve(solver_param(workdir, "dns", "deferred", **kw), "deferred", caplog)
    assert deferred_lines == eager_lines and eager.smoothed_loss == deferred.smoothed_loss
    a, b = _state(eager), _state(deferred)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])


def test_deferred_equals_eager_where_layer_names_repeat(workdir, caplog):
    # Caffe lets two layers share a name; the INQ net's conv1 and ip1 both named "q" here. The deferred update
    # must freeze each parameter by its own layer's mask (it took the last layer of the name for both, and then
    # ip1's mask for conv1's weights). No test net: sharing weights by name with one fails, as in Caffe.
    def same_names(prefix):
        sp = solver_param(workdir, "inq", prefix, test_interval=0)
        del sp.test_iter[:]
        net = workdir / f"net_{prefix}.prototxt"
        text = (workdir / "net_inq.prototxt").read_text()
        net.write_text(text.replace('name: "conv1"', 'name: "q"').replace('name: "ip1"', 'name: "q"'))
        sp.net = str(net)
        return sp

    eager, eager_lines = _solve(same_names("eager"), "eager", caplog)
    deferred, deferred_lines = _solve(same_names("deferred"), "deferred", caplog)
    assert {e.layer for e in deferred.params} == {"q"} and len({e.module for e in deferred.params}) == 2
    assert deferred_lines == eager_lines and eager.smoothed_loss == deferred.smoothed_loss
    a, b = _state(eager), _state(deferred)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])


def test_deferred_reads_the_loss_only_where_needed(workdir, monkeypatch):
    # No display, test, epoch end or snapshot point: the loss buffer is read when full (LOSS_SLOTS, made small here) and at
    # the end of step(); the smoothed loss is the eager one.
    monkeypatch.setattr(step_module, "LOSS_SLOTS", 4)
    kw = dict(display=0, test_interval=0, snapshot=0, max_iter=10, average_loss=3, epoch_iters=100)
    sp = solver_param(workdir, "plain", "eager", **kw)
    del sp.test_iter[:]
    eager = Solver(sp, verbose=False, options={"step_mode": "eager"})
    eager.step(10)
    sp = solver_param(workdir, "plain", "deferred", **kw)
    del sp.test_iter[:]
    deferred = Solver(sp, verbose=False, options={"step_mode": "deferred"})
    reads = []
    real_read = deferred._read_losses

    def counting_read(start):
        reads.append((deferred.iter, len(deferred._loop.pending)))
        real_read(start)

    monkeypatch.setattr(deferred, "_read_losses", counting_read)
    deferred.step(10)
    # read with 4 losses pending at iterations 3 and 7 (inside the iteration, before iter += 1), 2 at the end
    assert [r for r in reads if r[1]] == [(3, 4), (7, 4), (10, 2)]
    assert deferred.smoothed_loss == eager.smoothed_loss
    a, b = _state(eager), _state(deferred)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])


def _nan_param(workdir, prefix, **kw):
    sp = solver_param(workdir, "plain", prefix, base_lr=1e6, lr_policy="fixed", momentum=0.0, max_iter=40,
                      test_interval=0, dropout=False, **kw)
    del sp.test_iter[:]
    return sp


def test_deferred_non_finite_stop_matches_eager(workdir, caplog):
    # The eager loop stops at the first non-finite loss; the deferred loop notices it at the next host read
    # (here: the end of step(), nothing is displayed or saved before) yet ends in the same place: the same
    # iteration in the error, the same weights and history in memory (the later updates changed nothing).
    results, ran = {}, {}
    for mode in ("eager", "deferred"):
        s = Solver(_nan_param(workdir, mode, display=0, snapshot=0, epoch_iters=100), verbose=False,
                   options={"step_mode": mode})
        ran[mode] = []
        s.add_callback(AfterIteration(lambda solver, m=mode: ran[m].append(solver.iter)))
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="netcompress"), pytest.raises(NonFiniteLossError) as e:
            s.step(40)
        results[mode] = (str(e.value), s.iter, _state(s))
        # the last error logged (the data layer's prefetch thread may log its restart at INFO after it)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and errors[-1].getMessage() == str(e.value)
        if mode == "deferred":
            assert bool(s._loop.ok) and not s._loop.pending  # reported: the flag starts afresh
    (msg_e, it_e, st_e), (msg_d, it_d, st_d) = results["eager"], results["deferred"]
    bad = int(re.search(r"Iteration (\d+), loss = (nan|inf)", msg_e).group(1))
    assert bad >= 1 and it_e == it_d == bad
    assert ran["eager"][-1] == bad and ran["deferred"][-1] == 40  # deferred: read at the end of step(40)
    assert msg_d == msg_e and "training stopped before applying this update" in msg_d
    assert _bits_equal(st_e[0], st_d[0]) and _bits_equal(st_e[1], st_d[1])
    assert all(torch.isfinite(t).all() for t in st_d[0])


def test_labels_out_of_range_off_the_cpu_stop_with_the_cause(workdir, monkeypatch):
    # Off the CPU (forced here) SoftmaxWithLoss checks labels on the device (no host read per iteration); a
    # label past the net's classes (4 digit classes, 3 outputs) then stops training at the finite-loss check,
    # eager and deferred alike, at the same iteration, with the layer named; on the CPU the layer raises at once.
    from netcompress.errors import NetDefinitionError
    from netcompress.layers import loss as loss_module

    def param(prefix):
        sp = solver_param(workdir, "plain", prefix, display=0, snapshot=0, test_interval=0, epoch_iters=100)
        del sp.test_iter[:]
        net = workdir / "net_plain.prototxt"
        net.write_text(net.read_text().replace("num_output: 4", "num_output: 3"))
        return sp

    with pytest.raises(NetDefinitionError, match=r"layer 'loss' \(type SoftmaxWithLoss\): label 3 is out of range"):
        Solver(param("cpu"), verbose=False, options={"step_mode": "eager"}).step(5)
    monkeypatch.setattr(loss_module, "_host_check", lambda t: False)
    msgs = {}
    for mode in ("eager", "deferred"):
        s = Solver(param(mode), verbose=False, options={"step_mode": mode})
        with pytest.raises(NonFiniteLossError) as e:
            s.step(5)
        msgs[mode] = (str(e.value), s.iter)
        assert all(torch.isfinite(t).all() for t in s.net.parameters())
    assert msgs["eager"] == msgs["deferred"]
    assert ("Layer 'loss' (type SoftmaxWithLoss) got a label outside [0, 3) (the predictions' classes): the data's "
            "labels do not fit the net.") in msgs["eager"][0]
    assert "Lower base_lr" not in msgs["eager"][0]


def test_deferred_non_finite_stop_keeps_the_last_good_snapshot(workdir, capsys):
    # Through the command line, snapshots every iteration: the same last good snapshot as the eager run, no
    # snapshot after it, the same error line.
    outs = {}
    for mode in ("eager", "deferred"):
        path = workdir / f"nan_{mode}.prototxt"
        ncio.write_text_proto(str(path), _nan_param(workdir, mode, display=3, snapshot=1))
        rc = cli_main(["train", "--solver", str(path), "--step-mode", mode])
        err = capsys.readouterr().err
        assert rc == 1
        bad = int(re.search(r"Iteration (\d+), loss = (nan|inf)", err).group(1))
        last = workdir / f"{mode}_plain_iter_{bad}.caffemodel"
        assert last.is_file() and f"Last good snapshot: {last}" in err
        assert not (workdir / f"{mode}_plain_iter_{bad + 1}.caffemodel").exists()
        outs[mode] = (bad, last.read_bytes())
    assert outs["eager"] == outs["deferred"]


def test_step_mode_choice_and_log_line(workdir, caplog):
    sp = solver_param(workdir, "plain", max_iter=1, test_interval=0, snapshot=0)
    del sp.test_iter[:]
    # auto on the CPU: eager, and no extra log line (the CPU log is Caffe's as before)
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s = Solver(sp, verbose=False)
        s.step(1)
    assert s.step_mode == "eager" and "Training step" not in caplog.text
    assert choose_step_mode(s) == ("eager", "the CPU reads each loss at no cost")
    # graph on the CPU: a clear error naming the solver
    s = Solver(sp, verbose=False, options={"step_mode": "graph"})
    with pytest.raises(NetcompressError, match=r"step_mode graph: cannot capture .*CUDA graphs need a CUDA device"):
        s.step(1)
    # deferred where its update does not apply
    sp2 = solver_param(workdir, "plain", type="Adam", max_iter=1)
    with pytest.raises(NetcompressError, match="step_mode deferred: the deferred update implements SGD, not type Adam"):
        Solver(sp2, verbose=False, options={"step_mode": "deferred"}).step(1)
    sp3 = solver_param(workdir, "plain", clip_gradients=1.0, max_iter=1)
    assert step_module.deferred_refusal(Solver(sp3, verbose=False)) == \
        "clip_gradients reads the gradient norm on the host"


def test_graph_refusals_name_the_reason(workdir):
    # Everything but the device check runs anywhere: the net's layers and the callbacks decide.
    s = Solver(solver_param(workdir, "dns", dropout=False), verbose=False)
    assert graph_refusal(s, device=False) is None  # Data, DNS conv/ip, ReLU, MAX pooling, SoftmaxWithLoss
    s = Solver(solver_param(workdir, "dns"), verbose=False)
    assert graph_refusal(s, device=False) == "layer 'drop' (type Dropout) draws from its own generator"
    s = Solver(solver_param(workdir, "inq", dropout=False, iter_size=2), verbose=False)
    assert graph_refusal(s, device=False) == "iter_size is 2 (the gradient hooks run between backward passes)"

    class Hook(TrainingCallback):
        def before_update(self, solver):
            pass

    s = Solver(solver_param(workdir, "plain", dropout=False), verbose=False, callbacks=[Hook()])
    assert graph_refusal(s, device=False) == ("the training callback Hook overrides before_update and does not "
                                              "declare itself graph-safe")
    Hook.graph_safe = True
    assert graph_refusal(s, device=False) is None


def test_step_mode_flag_is_offered(workdir, capsys):
    path = workdir / "solver.prototxt"
    sp = solver_param(workdir, "plain", max_iter=2, test_interval=0, snapshot=0, display=1)
    del sp.test_iter[:]
    ncio.write_text_proto(str(path), sp)
    assert cli_main(["train", "--solver", str(path), "--step-mode", "deferred"]) == 0
    err = capsys.readouterr().err
    assert "] Training step: deferred (losses read on the host at display, test, epoch and snapshot points); " \
           "asked for (step_mode deferred)\n" in err
    assert re.search(r"\] Iteration 1 \([\d.e+-]+ iter/s, [\d.]+s/1 iters\), loss = [\d.e+-]+\n", err)


def test_forward_with_the_data_tops_is_forward(workdir):
    # The graph's split of the net: the data layers alone, then the rest from their tops.
    sp = solver_param(workdir, "dns")
    a = Net(sp.net, phase=pb.TRAIN, seed=3, verbose=False)
    b = Net(sp.net, phase=pb.TRAIN, seed=3, verbose=False)
    for _ in range(2):
        a.set_iteration(0), b.set_iteration(0)
        out_a = a()
        tops = b.data_tops()
        assert list(tops) == ["data", "label"] and tops["data"].shape == (8, 1, 10, 10)
        out_b = b.forward_with(tops)
        assert torch.equal(a.loss, b.loss) and list(out_a) == list(out_b)
        assert all(torch.equal(a.blobs[k], b.blobs[k]) for k in a.blobs)
    with pytest.raises(KeyError, match="forward_with needs every data layer's top; missing \\['label'\\]"):
        b.forward_with({"data": tops["data"]})


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_dns_surgery_launches_only_its_mask_updates(workdir):
    # The thresholds are computed once per statistics: a surgery after the first is one fused pass per blob.
    s = Solver(solver_param(workdir, "dns", dropout=False), verbose=False)
    layer = s.net.layer("ip1")
    layer.set_iteration(0)
    layer.before_train_forward()  # statistics and thresholds
    with _Count() as c:
        layer.surgery()
    assert c.ops == ["netcompress.dns_update_mask_"] * 2
    layer.stats = layer.stats.clone()  # new statistics (e.g. a restore): thresholds again
    with _Count() as c:
        layer.surgery()
    assert c.ops.count("netcompress.dns_update_mask_") == 2 and len(c.ops) > 2
    layer.stats.mul_(1.0)  # changed in place (e.g. a broadcast): thresholds again
    with _Count() as c:
        layer.surgery()
    assert len(c.ops) > 2


class _ReplayByRerun:
    """A stand-in for a CUDA graph on the CPU: the capture runs the body once (as the capture plus the first
    replay would), and each later replay runs it again, then copies what it produced into the tensors of the
    capture (the gradients, the blobs, the loss), as a real replay writes into the graph's own memory. It
    checks the graph mode's control flow (warm-up, capture, static inputs, replays, host reads), not CUDA."""

    def __init__(self, solver: Solver, body):
        self.solver, self.body, self.first = solver, body, True
        body()
        net = solver.net
        self.grads = [e.tensor.grad for e in solver.params]
        self.blobs = dict(net.blobs)
        self.loss = net.loss
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        if self.first:
            self.first = False
            return
        s, net = self.solver, self.solver.net
        for e in s.params:
            e.tensor.grad = None
        self.body()
        with torch.no_grad():
            for e, g in zip(s.params, self.grads):
                if g is not None:
                    g.copy_(e.tensor.grad)
                    e.tensor.grad = g
            for k, t in net.blobs.items():
                if self.blobs[k] is not t:
                    self.blobs[k].copy_(t)
            self.loss.copy_(net.loss)


@pytest.mark.parametrize("variant", ["plain", "dns", "inq"])
def test_graph_mode_control_flow_equals_deferred(workdir, variant, caplog, monkeypatch):
    import contextlib

    graphs = []
    holder = {}

    def fake_capture(body):
        graphs.append(_ReplayByRerun(holder["solver"], body))
        return graphs[-1]

    real_refusal = step_module.graph_refusal
    monkeypatch.setattr(step_module, "graph_refusal", lambda s, device=True: real_refusal(s, device=False))
    monkeypatch.setattr(step_module, "_capture", fake_capture)
    monkeypatch.setattr(step_module.DeviceLoop, "side_stream_context", lambda self: contextlib.nullcontext())
    deferred, deferred_lines = _solve(solver_param(workdir, variant, "deferred", dropout=False), "deferred", caplog)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s = holder["solver"] = Solver(solver_param(workdir, variant, "graph", dropout=False), verbose=False,
                                      options={"step_mode": "graph"})
        s.solve()
    assert s.step_mode == "graph"
    assert "Training step: CUDA graph (the whole iteration captured after 3 deferred iterations and replayed; " in caplog.text
    [graph] = graphs
    assert graph.replays == 12 - step_module.GRAPH_WARMUP  # iterations 3..11; the warm-up ran without it
    lines = []
    for r in caplog.records:
        m = VALUE_LINES.search(r.getMessage())
        if m:
            text = re.sub(r" \([\d.e+-]+ iter/s, [\d.]+s/\d+ iters\)", "", m.group(1))
            lines.append(text.replace(s.param.snapshot_prefix, "<prefix>"))
    assert lines == deferred_lines
    a, b = _state(deferred), _state(s)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])
    # the graph reads the data layer's tops from inputs of its own, into which every iteration copies them
    assert graph.blobs["data"] is s._loop._static["data"] and graph.blobs["label"] is s._loop._static["label"]


class _HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), bool(t), float(t), int(t)
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", sorted(small_net.VARIANTS))
def test_the_captured_iteration_reads_nothing_on_the_host(workdir, variant, monkeypatch):
    # A CUDA graph's capture fails at the first host read (a device sync), so the body the graph mode captures
    # (forward of the graph-safe layers, backward, loss record, update) must read no tensor value; on the CPU
    # the loss layers' label check does read (at no cost), so it is switched to its device form here, as on a GPU.
    import contextlib

    from netcompress.layers import loss as loss_module

    monkeypatch.setattr(loss_module, "_host_check", lambda t: False)
    reads = []

    def counting_capture(body):
        with _HostReads() as hr:
            graph = _ReplayByRerun(holder["solver"], body)
        reads.append(hr.reads)
        return graph

    holder = {}
    real_refusal = step_module.graph_refusal
    monkeypatch.setattr(step_module, "graph_refusal", lambda s, device=True: real_refusal(s, device=False))
    monkeypatch.setattr(step_module, "_capture", counting_capture)
    monkeypatch.setattr(step_module.DeviceLoop, "side_stream_context", lambda self: contextlib.nullcontext())
    sp = solver_param(workdir, variant, "graph", dropout=False, display=0, test_interval=0, snapshot=0)
    del sp.test_iter[:]
    s = holder["solver"] = Solver(sp, verbose=False, options={"step_mode": "graph"})
    s.step(step_module.GRAPH_WARMUP + 2)
    assert s.step_mode == "graph" and reads == [0]


WIDE_NET = """
name: "wide"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 crop_size: 10 }
        data_param { source: "@TRAIN@" batch_size: 8 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "prelu" type: "PReLU" bottom: "conv1" top: "prelu" }
layer { name: "lrn" type: "LRN" bottom: "prelu" top: "lrn" lrn_param { local_size: 3 } }
layer { name: "slice" type: "Slice" bottom: "lrn" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 3 } }
layer { name: "elu" type: "ELU" bottom: "s1" top: "elu" }
layer { name: "tanh" type: "TanH" bottom: "s2" top: "tanh" }
layer { name: "sum" type: "Eltwise" bottom: "elu" bottom: "tanh" top: "sum" eltwise_param { operation: SUM } }
layer { name: "prod" type: "Eltwise" bottom: "elu" bottom: "tanh" top: "prod" eltwise_param { operation: PROD } }
layer { name: "emax" type: "Eltwise" bottom: "sum" bottom: "prod" top: "emax" eltwise_param { operation: MAX } }
layer { name: "sig" type: "Sigmoid" bottom: "emax" top: "sig" }
layer { name: "abs" type: "AbsVal" bottom: "sum" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "abs" top: "bnll" }
layer { name: "pow" type: "Power" bottom: "bnll" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "pow" top: "log" }
layer { name: "exp" type: "Exp" bottom: "log" top: "exp" exp_param { scale: 0.1 } }
layer { name: "cat" type: "Concat" bottom: "sig" bottom: "exp" top: "cat" }
layer { name: "scale" type: "Scale" bottom: "cat" top: "scale" scale_param { bias_term: true } }
layer { name: "bias" type: "Bias" bottom: "scale" top: "bias" }
layer { name: "thr" type: "Threshold" bottom: "bias" top: "thr" }
layer { name: "silence" type: "Silence" bottom: "thr" }
layer { name: "pool" type: "Pooling" bottom: "bias" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "bias" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "resh" type: "Reshape" bottom: "pool2" top: "resh" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "flat" top: "ip_a"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "resh" top: "ip_b"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "eucl" type: "EuclideanLoss" bottom: "ip_a" bottom: "ip_b" top: "eucl" loss_weight: 0.1 }
layer { name: "relu" type: "ReLU" bottom: "ip_a" top: "relu_a" }
layer { name: "soft" type: "Softmax" bottom: "ip_b" top: "soft" }
layer { name: "silence2" type: "Silence" bottom: "soft" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "relu_a" bottom: "label" top: "loss" }
"""


def test_the_graph_safe_layer_types_read_nothing_when_captured(workdir, monkeypatch):
    # The layer types that declare themselves graph-safe (Layer.graph_safe), in one net (Split comes in where a
    # blob feeds two layers), through the stand-in capture under the host-read counter: no tensor value is read.
    # Left out here: the DNS/INQ/masked layers (the test above), Deconvolution and Dropout.
    import contextlib

    from netcompress.layers import loss as loss_module

    monkeypatch.setattr(loss_module, "_host_check", lambda t: False)
    net = workdir / "wide.prototxt"
    net.write_text(WIDE_NET.replace("@TRAIN@", str(workdir / "train_lmdb")))
    reads, holder = [], {}

    def counting_capture(body):
        with _HostReads() as hr:
            graph = _ReplayByRerun(holder["solver"], body)
        reads.append(hr.reads)
        return graph

    real_refusal = step_module.graph_refusal
    monkeypatch.setattr(step_module, "graph_refusal", lambda s, device=True: real_refusal(s, device=False))
    monkeypatch.setattr(step_module, "_capture", counting_capture)
    monkeypatch.setattr(step_module.DeviceLoop, "side_stream_context", lambda self: contextlib.nullcontext())
    sp = pb.SolverParameter(net=str(net), base_lr=0.01, lr_policy="fixed", momentum=0.9, weight_decay=5e-4,
                            max_iter=100, display=0, snapshot=0, random_seed=3, solver_mode=pb.SolverParameter.CPU,
                            snapshot_prefix=str(workdir / "wide"))
    s = holder["solver"] = Solver(sp, verbose=False, options={"step_mode": "graph"})
    s.step(step_module.GRAPH_WARMUP + 2)
    assert s.step_mode == "graph" and reads == [0]
    assert math.isfinite(s.smoothed_loss)


def test_a_failed_capture_runs_deferred_and_says_so(workdir, monkeypatch, caplog):
    # A capture that fails (on a GPU: a host read, an unsupported op) leaves the solver in the deferred mode,
    # with a warning, and `step_mode` then says "deferred" (what the benchmark rows report); the run continues
    # exactly as a deferred one.
    import contextlib

    def failing_capture(body):
        raise RuntimeError("operation not permitted when stream is capturing")

    real_refusal = step_module.graph_refusal
    monkeypatch.setattr(step_module, "graph_refusal", lambda s, device=True: real_refusal(s, device=False))
    monkeypatch.setattr(step_module, "_capture", failing_capture)
    monkeypatch.setattr(step_module.DeviceLoop, "side_stream_context", lambda self: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    kw = dict(dropout=False, display=0, test_interval=0, snapshot=0)
    sp = solver_param(workdir, "inq", "graph", **kw)
    del sp.test_iter[:]
    s = Solver(sp, verbose=False, options={"step_mode": "graph"})
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        s.step(step_module.GRAPH_WARMUP + 3)
    assert s.step_mode == "deferred" and s.iter == step_module.GRAPH_WARMUP + 3
    assert f"CUDA graph capture failed at iteration {step_module.GRAPH_WARMUP} (RuntimeError: operation not " \
           "permitted when stream is capturing); running deferred iterations without graphs" in caplog.text
    sp = solver_param(workdir, "inq", "deferred", **kw)
    del sp.test_iter[:]
    d = Solver(sp, verbose=False, options={"step_mode": "deferred"})
    d.step(step_module.GRAPH_WARMUP + 3)
    a, b = _state(d), _state(s)
    assert _bits_equal(a[0], b[0]) and _bits_equal(a[1], b[1])


def _growth_module():
    """tests/recipes/test_recipe_growth_snip.py (its net template and solver settings), loaded by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "test_recipe_growth_snip.py"
    spec = importlib.util.spec_from_file_location("_growth_snip_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deferred_equals_eager_through_growth_pruning_and_freezing(tmp_path, band_digits):
    # Recipe callbacks at work between iterations: growth rebuilds the nets (new parameters, lr_mult changed per
    # update by grown_lr CONSTANT_BASE_LR), SNIP prunes at epoch ends, freeze_zero_params writes zeros back after
    # each update, BatchNorm updates its statistics in the forward. Same bytes in both modes.
    from netcompress.data.mnist5k import write_digits_lmdb

    g = _growth_module()
    imgs, labels = band_digits(72, 8)
    write_digits_lmdb(str(tmp_path / "train"), imgs[:64], labels[:64])
    write_digits_lmdb(str(tmp_path / "test"), imgs[64:], labels[64:])
    net = g.make_net(tmp_path, tmp_path, ics="0,1,0,1,1")
    out = {}
    for mode in ("eager", "deferred"):
        p = g.solver_param(net, tmp_path, 12, growth=(3, 5), snip={"epoch": [3, 4], "policy": "ITERATIVE",
                                                                   "keep": [0.8], "min": [0.5]},
                           epoch_iters=2, snapshot=12, lr_policy="step", stepsize=6, gamma=0.5,
                           freeze_zero_params=True, test_interval=5, display=3, snapshot_prefix=str(tmp_path / mode))
        p.growth.grown_lr = pb.GrowthParameter.CONSTANT_BASE_LR
        s = Solver(p, verbose=False, options={"step_mode": mode})
        s.solve()
        assert s.step_mode == mode and s.net.has_layer("ic3")
        state = pb.SolverState.FromString((tmp_path / f"{mode}_iter_12.solverstate").read_bytes())
        out[mode] = ((tmp_path / f"{mode}_iter_12.caffemodel").read_bytes(),
                     [h.SerializeToString() for h in state.history], s.smoothed_loss)
    assert out["deferred"] == out["eager"]
