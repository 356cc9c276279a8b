"""Caffe's debug_info (netcompress.debuginfo): the [Forward]/[Backward] lines, their order (Split layers included),
their values, and when the solver writes them."""
from __future__ import annotations

import logging
import re

import pytest
import torch
from google.protobuf import text_format

from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

from log_helpers import netcompress_log
from small_net import solver_param, workdir  # noqa: F401 (workdir: a fixture)

BRANCHED = """
name: "branched"
debug_info: true
layer { name: "d" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a"
        param { name: "shared_w" } inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 3
        weight_filler { type: "gaussian" } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "c" type: "InnerProduct" bottom: "a" top: "c" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "b" bottom: "c" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
"""


def debug_lines(h) -> list[str]:
    """The [Forward]/[Backward] lines of layers among the captured messages."""
    return [m for m in h.lines if re.match(r"    \[(Forward|Backward)\] Layer ", m)]


@pytest.fixture
def lines():
    with netcompress_log() as h:
        yield h


def mean_abs(t: torch.Tensor) -> str:
    return "%g" % (float(t.detach().abs().double().sum()) / t.numel())


def test_lines_order_and_values(lines):
    net = Net(text_format.Parse(BRANCHED, pb.NetParameter()), phase=pb.TRAIN, seed=4, verbose=False)
    assert net.debug_info  # the NetParameter's field
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    label = torch.tensor([0.0, 1.0, 2.0, 1.0])
    net(x=x, label=label)
    blobs = dict(net.blobs)
    for t in ("a", "b", "c", "s"):
        blobs[t].retain_grad()
    net.loss.backward()
    net.log_backward_debug_info()
    got = debug_lines(lines)
    wa, ba = net.layer("a").weight, net.layer("a").bias
    wb, bb = net.layer("b").weight, net.layer("b").bias
    wc, bc = net.layer("c").weight, net.layer("c").bias
    a = blobs["a"]
    # the two consumers' parts of a's gradient (Caffe's Split tops a_a_0_split_0 and _1), and their sum
    from_b, from_c = blobs["b"].grad @ wb, blobs["c"].grad @ wc
    torch.testing.assert_close(from_b + from_c, a.grad)
    want = [
        f"    [Forward] Layer d, top blob x data: {mean_abs(x)}",
        f"    [Forward] Layer d, top blob label data: {mean_abs(label)}",
        f"    [Forward] Layer a, top blob a data: {mean_abs(a)}",
        f"    [Forward] Layer a, param blob shared_w data: {mean_abs(wa)}",  # a ParamSpec name is shown
        f"    [Forward] Layer a, param blob 1 data: {mean_abs(ba)}",
        f"    [Forward] Layer a_a_0_split, top blob a_a_0_split_0 data: {mean_abs(a)}",
        f"    [Forward] Layer a_a_0_split, top blob a_a_0_split_1 data: {mean_abs(a)}",
        f"    [Forward] Layer b, top blob b data: {mean_abs(blobs['b'])}",
        f"    [Forward] Layer b, param blob 0 data: {mean_abs(wb)}",
        "    [Forward] Layer b, param blob 1 data: 0.5",
        f"    [Forward] Layer c, top blob c data: {mean_abs(blobs['c'])}",
        f"    [Forward] Layer c, param blob 0 data: {mean_abs(wc)}",
        f"    [Forward] Layer c, param blob 1 data: {mean_abs(bc)}",
        f"    [Forward] Layer sum, top blob s data: {mean_abs(blobs['s'])}",
        f"    [Forward] Layer loss, top blob loss data: {mean_abs(net.blobs['loss'])}",
        # backward: last layer first; the label gets no diff, c's lr_mult 0 blobs none
        f"    [Backward] Layer loss, bottom blob s diff: {mean_abs(blobs['s'].grad)}",
        f"    [Backward] Layer sum, bottom blob b diff: {mean_abs(blobs['b'].grad)}",
        f"    [Backward] Layer sum, bottom blob c diff: {mean_abs(blobs['c'].grad)}",
        f"    [Backward] Layer c, bottom blob a_a_0_split_1 diff: {mean_abs(from_c)}",
        f"    [Backward] Layer b, bottom blob a_a_0_split_0 diff: {mean_abs(from_b)}",
        f"    [Backward] Layer b, param blob 0 diff: {mean_abs(wb.grad)}",
        f"    [Backward] Layer b, param blob 1 diff: {mean_abs(bb.grad)}",
        f"    [Backward] Layer a_a_0_split, bottom blob a diff: {mean_abs(a.grad)}",
        f"    [Backward] Layer a, param blob 0 diff: {mean_abs(wa.grad)}",
        f"    [Backward] Layer a, param blob 1 diff: {mean_abs(ba.grad)}",
    ]
    assert got == want
    (norms,) = [r for r in lines.records if "All net params" in r.getMessage()]
    assert norms.levelno == logging.ERROR  # Caffe's LOG(ERROR)
    params = [wa, ba, wb, bb, wc, bc]
    l1d = sum(float(p.detach().abs().double().sum()) for p in params)
    l1g = sum(float(p.grad.abs().double().sum()) for p in params if p.grad is not None)
    l2d = sum(float(p.detach().double().square().sum()) for p in params) ** 0.5
    l2g = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None) ** 0.5
    assert norms.getMessage() == (f"    [Backward] All net params (data, diff): L1 norm = ({l1d:g}, {l1g:g}); "
                                  f"L2 norm = ({l2d:g}, {l2g:g})")
    # off: nothing
    lines.clear()
    net.debug_info = False
    net(x=x, label=label)
    net.loss.backward()
    net.log_backward_debug_info()
    assert not debug_lines(lines)


MASKED = """
name: "masked"
debug_info: true
layer { name: "d" type: "Input" top: "x" top: "label" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "dns" type: "DNSInnerProduct" bottom: "x" top: "h" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" } } }
layer { name: "inq" type: "INQInnerProduct" bottom: "h" top: "s" %s
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" } }
        inq_inner_product_param { portion: 0 portion: 0.5 num_quantum_values: 7 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("inq_params, force", [("", False), ("param { } param { } param { lr_mult: 0 } "
                                                                 "param { lr_mult: 0 }", False),
                                                ("param { lr_mult: 0 } " * 4, True)])
def test_masks_are_listed_as_the_reference_forks_blobs(lines, inq_params, force):
    """The reference fork's DNS/INQ masks are blobs 2 and 3 with their ParamSpec (lr_mult 1 unless given): Caffe's
    BackwardDebugInfo lists them with a zero diff; lr_mult 0 leaves them out; force_backward lists every blob."""
    text = MASKED % inq_params + ("force_backward: true\n" if force else "")
    net = Net(text_format.Parse(text, pb.NetParameter()), phase=pb.TRAIN, seed=4, verbose=False)
    net(x=torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), label=torch.tensor([0.0, 1.0, 2.0, 1.0]))
    net.loss.backward()
    net.log_backward_debug_info()
    got = [m for m in debug_lines(lines) if ", param blob " in m and "[Backward]" in m]
    inq, dns = net.layer("inq"), net.layer("dns")
    inq_listed = [0, 1, 2, 3] if force or not inq_params else [0, 1]
    want = [f"    [Backward] Layer inq, param blob {i} diff: "
            f"{mean_abs(inq.blobs()[i].grad) if i < 2 and inq.blobs()[i].grad is not None else 0}"
            for i in inq_listed]
    want += [f"    [Backward] Layer dns, param blob {i} diff: {mean_abs(dns.blobs()[i].grad) if i < 2 else 0}"
             for i in range(4)]
    assert got == want


def test_the_solver_logs_display_iterations_and_test_forwards(workdir, lines):
    sp = solver_param(workdir, max_iter=5, display=2, test_interval=4, snapshot=0, debug_info=True)
    solver = Solver(sp)
    solver.solve()
    messages = [r.getMessage() for r in lines.records]
    norms = [i for i, m in enumerate(messages) if "All net params" in m]
    displays = [i for i, m in enumerate(messages) if re.match(r"Iteration \d+ \(", m)]
    # iterations 0, 2 and 4 are displays: one backward each, its lines just before the display line
    assert len(norms) == 3 and len(displays) == 3
    assert all(d - 3 < n < d for n, d in zip(norms, displays))
    backward = [m.split(" diff: ")[0] for m in messages if m.startswith("    [Backward] Layer ")]
    third = len(backward) // 3
    assert third and backward == backward[:third] * 3  # the same lines at each display
    # the test nets log every forward (2 test iterations, at iterations 0 and 4); the train net only its
    # display iterations' forwards
    assert sum("Testing net" in m for m in messages) == 2
    assert sum(m.startswith("    [Forward] Layer ") and ", top blob data " in m for m in messages) == 3 + 2 * 2
    # the views that catch the gradients change no number: the same weights as a run without debug_info
    sp.debug_info = False
    plain = Solver(sp, verbose=False)
    plain.solve()
    for a, b in zip(solver.net.learnable_params(), plain.net.learnable_params()):
        assert torch.equal(a.tensor, b.tensor), a.key


def test_pycaffe_forward_and_backward_write_the_same_lines(tmp_path, lines):
    """pycaffe's net.forward() / net.backward() (layer by layer, as Caffe's BackwardFromTo: no norms line) log
    what the core net's forward and backward log."""
    from netcompress import pycaffe as caffe

    (tmp_path / "net.prototxt").write_text(BRANCHED)
    core = Net(str(tmp_path / "net.prototxt"), phase=pb.TRAIN, seed=4, verbose=False)
    core.save(str(tmp_path / "w.caffemodel"))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    label = torch.tensor([2.0, 0.0, 1.0, 1.0])
    core(x=x, label=label)
    core.loss.backward()
    core.log_backward_debug_info()
    want = debug_lines(lines)
    lines.clear()
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN, weights=str(tmp_path / "w.caffemodel"))
    net.blobs["x"].data[...] = x.numpy()
    net.blobs["label"].data[...] = label.numpy()
    net.forward()
    net.backward()
    assert debug_lines(lines) == want
    assert not [r for r in lines.records if "All net params" in r.getMessage()]


@pytest.mark.cuda
def test_the_lines_on_cuda_are_the_cpus(lines):
    """The same net on a GPU writes the same lines, its values within float rounding of the CPU's."""
    def run(device):
        lines.clear()
        net = Net(text_format.Parse(BRANCHED, pb.NetParameter()), phase=pb.TRAIN, seed=4, verbose=False,
                  device=device)
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).to(device)
        net(x=x, label=torch.tensor([0.0, 1.0, 2.0, 1.0], device=device))
        net.loss.backward()
        net.log_backward_debug_info()
        return [m.rsplit(": ", 1) for m in debug_lines(lines)]

    cpu, gpu = run("cpu"), run("cuda")
    assert [k for k, _ in cpu] == [k for k, _ in gpu] and cpu
    for (k, a), (_, b) in zip(cpu, gpu):
        assert float(b) == pytest.approx(float(a), rel=1e-4, abs=1e-6), k
