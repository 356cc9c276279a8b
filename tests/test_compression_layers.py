"""DNS, INQ and C* layers: the reference's rules (reference-semantics 2, 3, Decisions 2-6, 9)."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress.solvers.callbacks import AfterIteration
from netcompress import io as ncio
from netcompress.errors import NetDefinitionError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

from graph_helpers import in_graph

ONES = 'weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }'


def net_text(conv_type="DNSConvolution", ip_type="DNSInnerProduct", conv_extra="", ip_extra="",
             conv_bias=True, ip_bias=True):
    def param_field(t):
        return {"DNSConvolution": "dns_convolution_param", "DNSInnerProduct": "dns_inner_product_param",
                "CConvolution": "cconvolution_param", "CInnerProduct": "cinner_product_param",
                "INQConvolution": "inq_convolution_param", "INQInnerProduct": "inq_inner_product_param"}.get(t)
    cf, pf = param_field(conv_type), param_field(ip_type)
    return f"""
name: "t"
layer {{ name: "in" type: "Input" top: "x" top: "y" input_param {{ shape {{ dim: 4 dim: 2 dim: 6 dim: 6 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv" type: "{conv_type}" bottom: "x" top: "c"
        convolution_param {{ num_output: 3 kernel_size: 3 bias_term: {str(conv_bias).lower()}
                             weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.3 }} }}
        {f"{cf} {{ {conv_extra} {ONES} }}" if cf else ""} }}
layer {{ name: "ip" type: "{ip_type}" bottom: "c" top: "z"
        inner_product_param {{ num_output: 5 bias_term: {str(ip_bias).lower()}
                               weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.3 }} }}
        {f"{pf} {{ {ip_extra} {ONES} }}" if pf else ""} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }}
"""


def make(text, phase="train", seed=0):
    return Net(text_format.Parse(text, pb.NetParameter()), phase=phase, seed=seed, verbose=False)


def feed(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    net.set_input(x=torch.randn(4, 2, 6, 6, generator=g), y=torch.tensor([0.0, 1.0, 2.0, 3.0]))


# ------------------------------------------------------------------------------------------------
# DNS
# ------------------------------------------------------------------------------------------------

def test_dns_blob_layout_and_forward_uses_masked_weights():
    net = make(net_text(conv_extra="c_rate: 0.5", ip_extra="c_rate: 0.5"))
    conv = net.layer("conv")
    assert conv.blob_names == ["weight", "bias", "weight_mask", "bias_mask"]
    assert [e.key for e in net.learnable_params()][:4] == ["conv[0]", "conv[1]", "conv[2]", "conv[3]"]
    assert [e.learnable for e in net.learnable_params()][:4] == [True, True, False, False]
    feed(net)
    with torch.no_grad():
        conv.weight_mask.bernoulli_(0.5)
    out = net()
    ref = torch.nn.functional.conv2d(net.blobs["x"], conv.weight * conv.weight_mask, conv.bias * conv.bias_mask)
    torch.testing.assert_close(net.blobs["c"], ref)
    net.loss.backward()
    # splicing: the weight gradient is the gradient w.r.t. W*M, unmasked
    x = net.blobs["x"]
    wm = (conv.weight * conv.weight_mask).detach().requires_grad_()
    bm = (conv.bias * conv.bias_mask).detach()
    c = torch.nn.functional.conv2d(x, wm, bm)
    ip = net.layer("ip")
    z = torch.nn.functional.linear(c.flatten(1), ip.weight * ip.weight_mask, ip.bias * ip.bias_mask)
    torch.nn.functional.cross_entropy(z, net.blobs["y"].long()).backward()
    torch.testing.assert_close(conv.weight.grad, wm.grad)
    assert (conv.weight.grad[conv.weight_mask == 0] != 0).any()


def test_dns_forward_after_surgery_takes_its_masked_weights():
    """The first forward after a surgery uses the W⊙M the surgery wrote (no second pass), with the same values
    and the same unmasked gradient as dns_masked_weight; a later forward, or one after W changed, computes W⊙M
    again."""
    from netcompress import ops
    net = make(net_text(conv_extra="c_rate: 0.5", ip_extra="c_rate: 0.5"))
    feed(net)
    conv, ip = net.layer("conv"), net.layer("ip")
    net.set_iteration(0)
    net.before_train_forward()  # iteration 0: the surgery runs
    assert conv.surgeries == 1 and (conv.weight_mask == 0).any()
    net()
    assert in_graph(net.blobs["c"], "_SurgeryMaskedBackward") and in_graph(net.blobs["z"], "_SurgeryMaskedBackward")
    net.loss.backward()
    grads = {name: (layer.weight.grad.clone(), layer.bias.grad.clone()) for name, layer in (("conv", conv), ("ip", ip))}
    out = net.blobs["z"].detach().clone()
    # the same forward and gradients through dns_masked_weight
    net.zero_grad(set_to_none=True)
    net()
    assert not in_graph(net.blobs["c"], "_SurgeryMaskedBackward")
    assert torch.equal(net.blobs["z"], out)
    net.loss.backward()
    for name, layer in (("conv", conv), ("ip", ip)):
        assert torch.equal(layer.weight.grad, grads[name][0]) and torch.equal(layer.bias.grad, grads[name][1])
    # W and b changed after the surgery (as a solver update does): computed again
    net.zero_grad(set_to_none=True)
    conv.surgery()
    with torch.no_grad():
        conv.weight.mul_(2)
        conv.bias.add_(1)
    net()
    assert not in_graph(net.blobs["c"], "_SurgeryMaskedBackward")
    assert torch.equal(net.blobs["c"], torch.nn.functional.conv2d(
        net.blobs["x"], ops.dns_masked_weight(conv.weight, conv.weight_mask).detach(),
        ops.dns_masked_weight(conv.bias, conv.bias_mask).detach()))


@pytest.mark.cuda
def test_dns_forward_after_surgery_on_cuda_computes_its_masked_weights():
    """On CUDA the forward always runs dns_masked_weight (a CUDA graph would freeze a per-step choice)."""
    net = Net(text_format.Parse(net_text(conv_extra="c_rate: 0.5"), pb.NetParameter()), phase="train", seed=0,
              verbose=False, device="cuda")
    g = torch.Generator().manual_seed(0)
    net.set_input(x=torch.randn(4, 2, 6, 6, generator=g).cuda(), y=torch.tensor([0.0, 1.0, 2.0, 3.0]).cuda())
    net.set_iteration(0)
    net.before_train_forward()
    assert net.layer("conv").surgeries == 1
    net()
    assert not in_graph(net.blobs["c"], "_SurgeryMaskedBackward")


def test_dns_training_same_bits_with_and_without_the_surgery_reuse(monkeypatch):
    """Training steps in which surgeries run give the same weights, masks and losses whether the forward takes the
    surgery's W⊙M or computes it (the reuse is a saving, not a change)."""
    from netcompress.layers.dns import DNSLayer
    from netcompress.layers.masked import MaskedLayer

    def run():
        sp = pb.SolverParameter(base_lr=0.05, lr_policy="fixed", max_iter=6, momentum=0.9, weight_decay=0.01,
                                random_seed=1, solver_mode=pb.SolverParameter.CPU)
        text_format.Parse(net_text(conv_extra="c_rate: 0.3", ip_extra="c_rate: 0.3"), sp.net_param)
        s = Solver(sp, verbose=False)
        feed(s.net)
        s.step(6)
        layers = [s.net.layer("conv"), s.net.layer("ip")]
        assert all(layer.surgeries >= 5 for layer in layers)
        return [t.detach().clone() for layer in layers for t in (layer.weight, layer.bias, layer.weight_mask,
                                                                   layer.bias_mask)]

    reused = run()
    monkeypatch.setattr(DNSLayer, "_masked", MaskedLayer._masked)  # W⊙M computed at every forward
    computed = run()
    assert all(torch.equal(a, b) for a, b in zip(reused, computed))


def test_dns_statistics_and_mask_rule():
    net = make(net_text(conv_extra="c_rate: 0.5 alpha_low: 0.9 alpha_high: 1.2"))
    conv = net.layer("conv")
    w = torch.cat([conv.weight.detach().flatten(), conv.bias.detach()]).double()
    mu = w.abs().mean()
    std = (w.pow(2).mean() - mu ** 2).sqrt()
    T = max(float(mu + 0.5 * std), 0.0)
    net.set_iteration(0)
    conv.before_train_forward()
    assert conv.stats[0].item() == pytest.approx(float(mu), rel=1e-6)
    assert conv.stats[1].item() == pytest.approx(float(std), rel=1e-6)
    expected = (conv.weight.detach().abs() > 0.9 * T).float()
    torch.testing.assert_close(conv.weight_mask, expected)
    # splice: masked entries above alpha_high*T come back, those between stay pruned
    with torch.no_grad():
        conv.weight.flatten()[0] = 1.3 * T
        conv.weight.flatten()[1] = 1.1 * T
        conv.weight_mask.flatten()[:2] = 0
    conv.surgery()
    assert conv.weight_mask.flatten()[0] == 1 and conv.weight_mask.flatten()[1] == 0
    # other mask values are left alone
    with torch.no_grad():
        conv.weight_mask.flatten()[2] = 0.5
    conv.surgery()
    assert conv.weight_mask.flatten()[2] == 0.5


def test_dns_gate_one_draw_per_forward_and_iter_stop():
    net = make(net_text(conv_extra="gamma: 1.0 power: 1 iter_stop: 3", ip_extra="gamma: 1.0 iter_stop: -1"))
    feed(net)
    conv, ip = net.layer("conv"), net.layer("ip")
    gen = net.ctx.named_generator("dns_surgery")
    for it in range(6):
        net.set_iteration(it)
        before = gen.get_state().clone()
        n_conv, n_ip = conv.surgeries, ip.surgeries
        net.before_train_forward()
        # exactly one draw per DNS layer per TRAIN forward, in layer order, even after iter_stop
        g = torch.Generator()
        g.set_state(before)
        r = [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(2)]
        assert torch.equal(g.get_state(), gen.get_state())
        expect_conv = math.pow(1 + it, -1) > r[0] and it < 3
        assert conv.surgeries - n_conv == int(expect_conv)
        assert ip.surgeries == n_ip == 0  # iter_stop < 0: never prunes
        net()
    assert conv.surgeries >= 1  # iteration 0 always operates


def test_surgery_draws_follow_random_seed():
    a, b, c = (make(net_text(conv_extra="gamma: 1"), seed=s) for s in (5, 5, 6))
    ra = torch.rand(3, generator=a.ctx.named_generator("dns_surgery"))
    rb = torch.rand(3, generator=b.ctx.named_generator("dns_surgery"))
    rc = torch.rand(3, generator=c.ctx.named_generator("dns_surgery"))
    assert torch.equal(ra, rb) and not torch.equal(ra, rc)


def test_dns_iter_size_masks_earlier_gradients():
    net = make(net_text())
    feed(net)
    conv = net.layer("conv")
    with torch.no_grad():
        conv.weight_mask.bernoulli_(0.5)
    net()
    net.before_backward()
    net.loss.backward()
    net.after_backward()
    g1 = conv.weight.grad.clone()
    net()
    net.before_backward()  # with after_backward: diff <- mask * diff + the second gradient
    net.loss.backward()
    net.after_backward()
    torch.testing.assert_close(conv.weight.grad, g1 * conv.weight_mask + g1)


def test_dns_without_bias_and_param_numbering_of_c_layers():
    net = make(net_text(conv_type="CConvolution", ip_type="CInnerProduct", conv_bias=False,
                        conv_extra="c_rate: 0.7 iter_stop: 9", ip_extra="c_rate: 0.3 iter_stop: 4"))
    conv, ip = net.layer("conv"), net.layer("ip")
    assert conv.blob_names == ["weight", "weight_mask"] and conv.type_name == "CConvolution"
    assert (conv.c_rate, conv.iter_stop) == (pytest.approx(0.7), 9)
    assert (ip.c_rate, ip.iter_stop) == (pytest.approx(0.3), 4)
    # the fork's wire numbers: CConvolution has iter_stop=3, c_rate=4; CInnerProduct c_rate=3, iter_stop=4
    lp = pb.LayerParameter()
    lp.cconvolution_param.ParseFromString(b"\x1d\x00\x00\x20\x41\x25\x00\x00\x00\x40")  # 3:10.0, 4:2.0
    assert lp.cconvolution_param.iter_stop == 10 and lp.cconvolution_param.c_rate == 2
    feed(net)
    net.set_iteration(0)
    net.before_train_forward()
    net()
    net.loss.backward()  # the no-bias path works (the reference crashed)
    assert conv.weight.grad is not None


def test_normal_model_into_dns_net_gets_filler_masks_and_raw_model_round_trips(tmp_path):
    normal = make(net_text("Convolution", "InnerProduct"), seed=1)
    p = str(tmp_path / "normal.caffemodel")
    normal.save(p)
    dns = make(net_text(), seed=2)
    dns.copy_from(p)
    torch.testing.assert_close(dns.layer("conv").weight, normal.layer("conv").weight)
    assert torch.all(dns.layer("conv").weight_mask == 1) and torch.all(dns.layer("ip").bias_mask == 1)
    with torch.no_grad():
        dns.layer("ip").weight_mask.bernoulli_(0.3)
    raw = str(tmp_path / "raw.caffemodel")
    dns.save(raw)
    m = ncio.read_caffemodel(raw)
    assert [len(l.blobs) for l in m.layer if l.blobs] == [4, 4]
    again = make(net_text(), seed=3)
    again.copy_from(raw)
    torch.testing.assert_close(again.layer("ip").weight_mask, dns.layer("ip").weight_mask)
    raw2 = str(tmp_path / "raw2.caffemodel")
    again.save(raw2)
    assert open(raw, "rb").read() == open(raw2, "rb").read()
    # a 4-blob raw model does not load into a normal net
    with pytest.raises(Exception, match="Incompatible number of blobs for layer 'conv'.*dns_to_normal"):
        normal.copy_from(raw)


def test_omitted_mask_filler_means_zero_masks():
    # BVLC's FillerParameter defaults to constant 0: "everything pruned" (reference 1.3)
    text = net_text().replace(ONES, "")
    net = make(text)
    assert torch.all(net.layer("conv").weight_mask == 0)


def test_dns_statistics_survive_resume_state():
    net = make(net_text(conv_extra="c_rate: 0.5"))
    net.set_iteration(0)
    net.before_train_forward()
    state = net.extra_state()
    fresh = make(net_text(conv_extra="c_rate: 0.5"), seed=9)
    fresh.load_extra_state(state)
    torch.testing.assert_close(fresh.layer("conv").stats, net.layer("conv").stats)
    assert torch.equal(fresh.ctx.named_generator("dns_surgery").get_state(), net.ctx.named_generator("dns_surgery").get_state())


# ------------------------------------------------------------------------------------------------
# INQ
# ------------------------------------------------------------------------------------------------

INQ = "portion: 0.0 portion: 0.5 num_quantum_values: 5"


def is_pow2_or_zero(t):
    a = t.abs()
    nz = a[a > 0]
    return bool(torch.all(torch.log2(nz) == torch.round(torch.log2(nz))))


def test_inq_quantizes_once_at_iteration_zero_with_logs(caplog):
    net = make(net_text("INQConvolution", "INQInnerProduct", INQ, INQ))
    conv = net.layer("conv")
    w0 = conv.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="netcompress"):
        net.set_iteration(0)
        net.before_train_forward()
    n = w0.numel()
    frozen = conv.weight_mask == 0
    assert int(frozen.sum()) >= n - round(n * 0.5)
    assert is_pow2_or_zero(conv.weight[frozen])
    # the largest magnitudes went first
    assert w0.abs()[~frozen].max() <= w0.abs()[frozen].min()
    assert torch.equal(conv.weight[~frozen], w0[~frozen])
    assert "[conv weight] Max_power =" in caplog.text
    assert f"[conv weight] init_not_quantized/total: {n}/{n}" in caplog.text
    assert "to_update/not_tobe_quantized/not_yet_quantized:" in caplog.text
    snap = conv.weight.detach().clone()
    net.set_iteration(0)
    net.before_train_forward()  # a second forward of iteration 0 (iter_size > 1) does not requantize
    assert torch.equal(conv.weight.detach(), snap)


def test_inq_rounding_and_counts_match_reference_rules():
    from netcompress.layers.inq import inq_partition_counts
    net = make(net_text("INQConvolution", "INQInnerProduct", "portion: 0.3 portion: 0.6 num_quantum_values: 7",
                        "portion: 0.3 portion: 0.6 num_quantum_values: 7"))
    ip = net.layer("ip")
    n_yet = ip.weight.numel()
    v = ip.weight.detach().double().clone()
    n_init, n_keep, n_upd = inq_partition_counts(n_yet, 0.3, 0.6)
    thr = v.abs().flatten().sort().values[n_keep]
    n1 = math.floor(math.log(4 * float(v.abs().max()) / 3) / math.log(2))
    n2 = n1 - 7 + 1
    net.set_iteration(0)
    ip.before_train_forward()
    for old, new, m in zip(v.flatten().tolist(), ip.weight.detach().flatten().tolist(),
                           ip.weight_mask.flatten().tolist()):
        if abs(old) >= thr:
            e = math.floor(math.log(4 * abs(old) / 3) / math.log(2))
            assert m == 0 and new == (math.copysign(2.0 ** e, old) if e >= n2 else 0.0)
        else:
            assert m == 1 and new == pytest.approx(old, abs=0)


@pytest.mark.parametrize("solver_type", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "LarsSGD"])
def test_inq_freezing_in_every_solver(solver_type):
    sp = pb.SolverParameter(base_lr=0.05, lr_policy="fixed", max_iter=4, momentum=0.9, weight_decay=0.01,
                            type=solver_type, random_seed=1, solver_mode=pb.SolverParameter.CPU)
    if solver_type in ("AdaGrad", "RMSProp"):
        sp.momentum = 0
    text_format.Parse(net_text("INQConvolution", "INQInnerProduct", INQ, INQ), sp.net_param)
    s = Solver(sp, verbose=False)
    feed(s.net)
    conv = s.net.layer("conv")
    s.step(1)  # iteration 0 quantizes, then updates
    frozen = conv.weight_mask == 0
    q = conv.weight.detach().clone()
    w_free = conv.weight.detach()[~frozen].clone()
    s.step(3)
    assert torch.equal(conv.weight.detach()[frozen], q[frozen]), "quantized weights moved"
    assert not torch.equal(conv.weight.detach()[~frozen], w_free), "free weights did not train"
    idx = [i for i, e in enumerate(s.params) if e.layer == "conv" and e.index == 0][0]
    for h in s.history[idx]:
        assert torch.all(h[frozen] == 0), "history of frozen entries must be zero"


def test_inq_test_at_iteration_zero_sees_the_previous_model(caplog):
    """Iteration order: the iteration-0 test runs before the TRAIN forward that quantizes, so it
    scores the unquantized model; the final test scores the quantized one."""
    text = net_text("INQConvolution", "INQInnerProduct", INQ, INQ)
    sp = pb.SolverParameter(base_lr=0.0, lr_policy="fixed", max_iter=1, test_interval=1, test_iter=[1],
                            random_seed=1, solver_mode=pb.SolverParameter.CPU, snapshot_after_train=False)
    text_format.Parse(text, sp.net_param)
    s = Solver(sp, verbose=False)
    feed(s.net)
    feed(s.test_nets[0])
    with torch.no_grad():
        before = float(s.test_nets[0]()["loss"])
    scores = []
    s.add_callback(AfterIteration(lambda solver: scores.append(dict(solver.last_test_scores))))
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s.solve()
    assert scores[0]["loss"] == pytest.approx(before, rel=1e-6)  # iteration 0: not yet quantized
    assert s.last_test_scores[0][1] != pytest.approx(before, rel=1e-6)  # iteration 1: quantized
    logs = caplog.text
    assert logs.index("Iteration 0, Testing net") < logs.index("[conv weight] Max_power")
    assert logs.index("[conv weight] Max_power") < logs.index("Iteration 1, Testing net")


def test_inq_without_bias_and_bad_portions():
    net = make(net_text("INQConvolution", "INQInnerProduct", INQ, INQ, conv_bias=False, ip_bias=False))
    conv = net.layer("conv")
    assert conv.blob_names == ["weight", "weight_mask"]
    net.set_iteration(0)
    net.before_train_forward()
    feed(net)
    net()
    net.loss.backward()
    assert conv.update_mask(0) is conv.weight_mask and conv.update_mask(1) is None
    with pytest.raises(NetDefinitionError, match="portion needs two values"):
        make(net_text("INQConvolution", "InnerProduct", "portion: 0.5"))
    with pytest.raises(NetDefinitionError, match="must not exceed"):
        make(net_text("INQConvolution", "InnerProduct", "portion: 0.6 portion: 0.3"))


def test_inq_resumed_stage_does_not_requantize():
    net = make(net_text("INQConvolution", "INQInnerProduct", INQ, INQ))
    net.load_extra_state(None)  # resumed from a snapshot (Caffe's or ours): never quantize again
    w = net.layer("conv").weight.detach().clone()
    net.set_iteration(0)
    net.before_train_forward()
    assert torch.equal(net.layer("conv").weight.detach(), w)
