"""`netcompress time`'s per-layer figures: each layer's backward is timed for what the net's own backward
computes (Caffe's bottom_need_backward), and a slow first call does not land in a layer's average."""
from __future__ import annotations

import time

import pytest
import torch

from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.timing import time_net
from google.protobuf import text_format

NET = """
name: "t"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" propagate_down: PD
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def _net(force: bool = False, ip1_propagates: bool = True) -> Net:
    text = ("force_backward: true\n" if force else "") + NET.replace("PD", "true" if ip1_propagates else "false")
    net = Net(text_format.Parse(text, pb.NetParameter()), phase=pb.TRAIN, seed=3, verbose=False)
    net.set_input(data=torch.randn(4, 1, 8, 8), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    return net


@pytest.fixture
def grad_calls(monkeypatch):
    """Every torch.autograd.grad call of time_net's per-layer passes: the shapes it differentiates for."""
    calls = []
    real = torch.autograd.grad

    def spy(outputs, inputs, *args, **kwargs):
        calls.append([tuple(t.shape) for t in inputs])
        return real(outputs, inputs, *args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    return calls


def _bottom_grads(calls, shape) -> int:
    return sum(shape in c for c in calls)


def test_a_first_convolution_is_timed_without_an_input_gradient(grad_calls):
    net = _net()
    time_net(net, iterations=2)
    assert grad_calls, "the per-layer backward passes ran"
    # conv1's bottom is the data: training computes no gradient for it, so neither does the timing
    assert _bottom_grads(grad_calls, (4, 1, 8, 8)) == 0
    # the bottoms that do get a diff in training are differentiated: pool1's (conv1) and ip1's (pool1)
    assert _bottom_grads(grad_calls, (4, 3, 6, 6)) > 0 and _bottom_grads(grad_calls, (4, 3, 3, 3)) > 0


def test_propagate_down_false_and_force_backward_as_in_the_net(grad_calls):
    time_net(_net(ip1_propagates=False), iterations=1)
    assert _bottom_grads(grad_calls, (4, 3, 3, 3)) == 0  # ip1's bottom: propagate_down false
    grad_calls.clear()
    time_net(_net(force=True, ip1_propagates=False), iterations=1)
    # force_backward: every bottom gets its diff, the data's too (as Caffe's Net does)
    assert _bottom_grads(grad_calls, (4, 3, 3, 3)) > 0 and _bottom_grads(grad_calls, (4, 1, 8, 8)) > 0


def test_a_slow_first_layer_alone_call_is_not_averaged(monkeypatch):
    """oneDNN builds a primitive on a call's first use (0.3 s for LeNet's conv1 weight gradient on
    its own): an untimed per-layer pass takes it, so the averages show the steady time."""
    net = _net()
    real = torch.autograd.grad
    first = [True]

    def slow_once(*args, **kwargs):
        if first[0]:
            first[0] = False
            time.sleep(0.5)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.autograd, "grad", slow_once)
    res = time_net(net, iterations=2)
    assert not first[0], "the per-layer pass called autograd.grad"
    assert set(res["layers"]) == set(net.layer_names)
    slowest = max(v["backward_ms"] for v in res["layers"].values())
    assert slowest < 200, f"a first call's 500 ms reached a layer's average: {res['layers']}"
    assert res["layers"]["conv1"]["backward_ms"] > 0 and res["layers"]["in"]["backward_ms"] == 0


def test_layers_sharing_a_name_are_each_timed(caplog):
    """Caffe lets layers share a name and times each by its position; here the Input and pool1 are both named
    "in" (the per-layer pass took the last layer of a name for both, and fed the data's layer pool1's inputs)."""
    net = Net(text_format.Parse(NET.replace('name: "pool1"', 'name: "in"').replace("PD", "true"), pb.NetParameter()),
              phase=pb.TRAIN, seed=3, verbose=False)
    net.set_input(data=torch.randn(4, 1, 8, 8), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with caplog.at_level("INFO", logger="netcompress"):
        res = time_net(net, iterations=2)
    assert list(res["layers"]) == ["in", "conv1", "in#2", "ip1", "loss"]
    assert res["layers"]["in"]["backward_ms"] == 0 and res["layers"]["in#2"]["backward_ms"] > 0
    forward_lines = [r.getMessage().split("\t")[0].strip() for r in caplog.records
                     if "\tforward: " in r.getMessage()]
    assert forward_lines == ["in", "conv1", "in", "ip1", "loss"]  # Caffe's lines: a layer's own name, in order


DNS_NET = """
name: "d"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "conv1" type: "DNSConvolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } }
        dns_convolution_param { gamma: 1e-05 power: 1 c_rate: 0.4 iter_stop: 1000
                                weight_mask_filler { type: "constant" value: 1 }
                                bias_mask_filler { type: "constant" value: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
"""


def _dns_net(phase) -> Net:
    net = Net(text_format.Parse(DNS_NET, pb.NetParameter()), phase=phase, seed=3, verbose=False)
    net.set_input(data=torch.randn(4, 1, 8, 8), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    return net


def test_a_train_net_runs_the_dns_surgery_inside_each_timed_forward():
    """As Caffe's fork does inside Layer::Forward: the first forward computes the statistics, and at
    iteration 0 every forward (whole-net and layer-alone, the untimed ones too) runs a surgery."""
    net = _dns_net(pb.TRAIN)
    time_net(net, iterations=3)
    conv = net.layer("conv1")
    assert conv.stats is not None
    assert conv.surgeries == 1 + 3 + (1 + 3)  # warm-up, timed passes, per-layer passes (one untimed)
    # at or past iter_stop, the reference's condition is false: no surgery
    late = _dns_net(pb.TRAIN)
    time_net(late, iterations=2, iteration=1000)
    assert late.layer("conv1").surgeries == 0


def test_a_test_net_changes_no_layer_state():
    net = _dns_net(pb.TEST)
    time_net(net, iterations=2)
    assert net.layer("conv1").surgeries == 0 and net.layer("conv1").stats is None


def test_time_command_checks_its_counts(capsys):
    from netcompress.timing import main

    with pytest.raises(SystemExit):
        main(["--model", "x.prototxt", "--iterations", "0"])
    assert "--iterations must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "x.prototxt", "--iteration", "-1"])
    assert "--iteration must be at least 0, got -1" in capsys.readouterr().err
    for flag in ("--iterations", "--iteration"):  # (past Caffe's int flag: it ran for ever)
        with pytest.raises(SystemExit):
            main(["--model", "x.prototxt", flag, str(2 ** 31)])
        assert f"{flag} takes at most 2147483647 (Caffe's int flag), got 2147483648" in capsys.readouterr().err


def test_train_and_test_check_their_iteration_counts(tmp_path, capsys):
    from netcompress.cli import main

    (tmp_path / "s.prototxt").write_text('net: "n.prototxt" base_lr: 0.1 max_iter: 1\n')
    assert main(["train", "--solver", str(tmp_path / "s.prototxt"), "--iterations", str(2 ** 31)]) == 1
    assert "--iterations takes at most 2147483647 (Caffe's int flag), got 2147483648" in capsys.readouterr().err
    assert main(["test", "--model", "n.prototxt", "--weights", "w.caffemodel", "--iterations", str(2 ** 31)]) == 1
    assert "--iterations takes at most 2147483647" in capsys.readouterr().err  # (it ran for ever)


def test_a_fresh_inq_net_fails_with_a_hint_and_times_past_its_step():
    """An INQ layer quantizes at iteration 0 inside Forward; on fresh weights (a zero bias) that is an
    error, which `time` completes with what to do instead."""
    from netcompress.errors import NetcompressError

    text = DNS_NET.replace('type: "DNSConvolution"', 'type: "INQConvolution"').replace(
        "dns_convolution_param { gamma: 1e-05 power: 1 c_rate: 0.4 iter_stop: 1000",
        "inq_convolution_param { portion: 0.0 portion: 0.3")
    net = Net(text_format.Parse(text, pb.NetParameter()), phase=pb.TRAIN, seed=3, verbose=False)
    net.set_input(data=torch.randn(4, 1, 8, 8), label=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    with pytest.raises(NetcompressError, match=r"cannot quantize the bias .*\[time runs a TRAIN net's per-forward "
                                               r"steps at solver iteration 0.*--iteration N"):
        time_net(net, iterations=1)
    res = time_net(net, iterations=1, iteration=1)  # past the quantization step
    assert res["forward_backward_ms"] > 0 and not net.layer("conv1").quantized
