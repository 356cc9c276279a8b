"""ActQuant, QuantConvolution, QuantInnerProduct and IntQuant (recipes-spec §4.5, §4.6, §5.2, T3) through nets
built from prototxt strings, against an independent NumPy re-implementation of the source's quantizers."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.errors import NetDefinitionError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

NET = """
name: "q"
layer { name: "in" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "act" type: "ActQuant" bottom: "x" top: "xq" act_quant_param { bitwidth: 4 @ACT@ } }
layer { name: "conv" type: "QuantConvolution" bottom: "xq" top: "c"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 }
                            bias_filler { type: "gaussian" std: 0.1 } }
        weight_quant_param { bitwidth: 4 @WQ@ } @CONV@ }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "ip" type: "QuantInnerProduct" bottom: "c" top: "z"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 }
                              bias_filler { type: "constant" value: 0.1 } @IP@ }
        weight_quant_param { bitwidth: 6 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
"""


def net_text(act="", wq="", conv="", ip="") -> str:
    return NET.replace("@ACT@", act).replace("@WQ@", wq).replace("@CONV@", conv).replace("@IP@", ip)


def make(text: str, phase=pb.TRAIN, seed=0) -> Net:
    return Net(text_format.Parse(text, pb.NetParameter()), phase=phase, seed=seed, verbose=False)


def batch(seed=0, scale=2.0, shift=0.0, relu=True):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(4, 3, 8, 8, generator=g) + shift
    return (x.relu() if relu else x), torch.tensor([0.0, 1.0, 2.0, 3.0])


# ---- an independent NumPy version of the source's quantizers (float32; rint = round half to even) -------------

def np_code(x, alpha, lo, hi):
    alpha = np.float32(alpha)
    return np.zeros_like(x) if alpha == 0 else np.clip(np.rint(x / alpha), lo, hi).astype(np.float32)


def np_act_quant(x, alpha, lo, hi):
    return np.float32(alpha) * np_code(x, alpha, lo, hi)


def np_als(v, bits, iters=100):
    """§4.6 per row of v (rows, K): α = max|v|/clip, then `iters` least-squares steps; ⟨q,q⟩ = 0 gives 0."""
    clip = 2 ** (bits - 1)
    alphas = []
    for row in v.astype(np.float32):
        a = np.float32(np.abs(row).max()) / np.float32(clip)
        q = np_code(row, a, -clip, clip - 1)
        for _ in range(iters):
            den = float(np.dot(q.astype(np.float64), q.astype(np.float64)))
            a = np.float32(float(np.dot(row.astype(np.float64), q.astype(np.float64))) / den) if den else np.float32(0)
            q = np_code(row, a, -clip, clip - 1)
        alphas.append(a)
    return np.array(alphas, dtype=np.float32)


def np_wq(v, alpha, bits):
    clip = 2 ** (bits - 1)
    rows = v.reshape(len(alpha), -1)
    return np.stack([a * np_code(r, a, -clip, clip - 1) for r, a in zip(rows, alpha)]).reshape(v.shape)


# ---- ActQuant ------------------------------------------------------------------------------------------------

def test_actquant_calibrates_on_the_first_train_batch_then_quantizes():
    net = make(net_text())
    act = net.layer("act")
    assert act.blob_names == ["alpha", "calib_min"] and not any(act.blob_is_learnable(i) for i in range(2))
    x, y = batch(0)
    net(x=x, y=y)
    # T3: α = max|x|/15 (post-ReLU: unsigned 4-bit), calib_min = min(x); the batch passes through unchanged
    xn = x.numpy()
    assert act.alpha.item() == np.float32(np.abs(xn).max()) / np.float32(15)
    assert act.calib_min.item() == xn.min() == 0.0
    assert torch.equal(net.blobs["xq"], x)
    assert act.quant_range() == (0, 15)
    # afterwards: α·clamp(round(x/α), 0, 15), and α stays frozen
    alpha = act.alpha.item()
    for seed in (1, 2):
        x2, _ = batch(seed, scale=3.0)
        net(x=x2, y=y)
        np.testing.assert_array_equal(net.blobs["xq"].numpy(), np_act_quant(x2.numpy(), alpha, 0, 15))
        assert act.alpha.item() == alpha
    assert net.blobs["xq"].unique().numel() <= 16


def test_actquant_straight_through_gradient():
    net = make(net_text())
    act = net.layer("act")
    x, y = batch(0)
    net(x=x, y=y)  # calibrates
    x2 = batch(1, scale=3.0)[0].requires_grad_()
    g = torch.randn(x2.shape, generator=torch.Generator().manual_seed(5))
    act(x2).backward(g)
    # T3: the STE mask [0 <= round(x/α) <= 15]
    r = np.rint(x2.detach().numpy() / np.float32(act.alpha.item()))
    np.testing.assert_array_equal(x2.grad.numpy(), np.where((r >= 0) & (r <= 15), g.numpy(), 0))
    assert (r > 15).any()  # some entries are clamped, and get no gradient
    assert act.alpha.grad is None


@pytest.mark.parametrize("shift, expected_range", [(0.0, (-16, 15)), (-1.5, (-8, 7))])
def test_actquant_signed_range(shift, expected_range):
    # §4.5: a negative calibration minimum gives the signed range, with one more bit when min >= -1
    net = make(net_text())
    act = net.layer("act")
    x = batch(0, scale=0.3, relu=False)[0].clamp(-0.99, 3.0) + shift
    y = batch(0)[1]
    xn = x.numpy()
    assert (-1 <= xn.min() < 0) if shift == 0 else xn.min() < -1
    net(x=x, y=y)
    lo, hi = expected_range
    assert act.quant_range() == expected_range
    assert act.alpha.item() == np.float32(np.abs(xn).max()) / np.float32(hi)
    assert act.calib_min.item() == xn.min()
    x2 = batch(3, scale=2.0, relu=False)[0]
    net(x=x2, y=y)
    np.testing.assert_array_equal(net.blobs["xq"].numpy(), np_act_quant(x2.numpy(), act.alpha.item(), lo, hi))


def test_actquant_forced_sign_and_modes():
    x, y = batch(0, scale=1.0, relu=False)
    net = make(net_text(act="signed: UNSIGNED"))
    net(x=x, y=y)
    assert net.layer("act").quant_range() == (0, 15)
    net = make(net_text(act="signed: SIGNED"))
    net(x=x.relu(), y=y)
    assert net.layer("act").quant_range() == (-16, 15)
    # NONE: alpha must come from the weights
    net = make(net_text(act="calibrate: NONE"))
    with pytest.raises(NetDefinitionError, match="layer 'act' \\(type ActQuant\\): alpha is 0 .*calibrate is NONE"):
        net(x=x, y=y)
    # SCRIPT: TRAIN forwards do not calibrate; a script's request does, in any phase
    net = make(net_text(act="calibrate: SCRIPT"), phase=pb.TEST)
    act = net.layer("act")
    net(x=x.relu(), y=y)
    assert act.alpha.item() == 0 and torch.equal(net.blobs["xq"], x.relu())
    act.request_calibration()
    net(x=x.relu(), y=y)
    assert act.alpha.item() == np.float32(x.relu().max().item()) / np.float32(15) and act.calibrated
    net(x=x.relu(), y=y)
    assert not torch.equal(net.blobs["xq"], x.relu())


def test_actquant_test_net_passes_through_until_the_train_net_calibrates():
    train = make(net_text())
    test = make(net_text(), phase=pb.TEST, seed=1)
    test.share_weights_with(train)
    x, y = batch(0)
    test(x=x, y=y)
    assert torch.equal(test.blobs["xq"], x)  # test_initialization before any TRAIN batch: float activations
    train(x=x, y=y)
    x2, _ = batch(1)
    test(x=x2, y=y)
    train(x=x2, y=y)
    assert torch.equal(test.blobs["xq"], train.blobs["xq"])
    assert not torch.equal(test.blobs["xq"], x2)


def test_actquant_parameter_errors():
    with pytest.raises(NetDefinitionError, match="refine_iters: 3 is not supported"):
        make(net_text(act="refine_iters: 3"))
    with pytest.raises(NetDefinitionError, match=r"bitwidth must be in \[2, 16\] with signed: AUTO, got 1"):
        make(net_text().replace("bitwidth: 4 ", "bitwidth: 1 ", 1))
    with pytest.raises(NetDefinitionError, match=r"weight_quant_param.bitwidth must be in \[2, 16\], got 17"):
        make(net_text().replace("weight_quant_param { bitwidth: 4 ", "weight_quant_param { bitwidth: 17 "))


# ---- QuantConvolution / QuantInnerProduct --------------------------------------------------------------------

def _prune(conv, seed=0):
    """A random 70 % mask with row 2 fully pruned, and row 4's weights all zero (Q13)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight_mask.copy_((torch.rand(conv.weight.shape, generator=g) < 0.7).float())
        conv.weight_mask[2] = 0
        conv.weight[4] = 0


def test_quant_conv_blob_layout_als_and_forward():
    net = make(net_text())
    conv = net.layer("conv")
    assert conv.blob_names == ["weight", "bias", "weight_mask", "bias_mask", "w_alpha"]
    assert [conv.blob_is_learnable(i) for i in range(5)] == [True, True, False, False, False]
    assert conv.w_alpha.shape == (6,)
    assert torch.all(conv.weight_mask == 1) and torch.all(conv.bias_mask == 1)  # no dns_convolution_param
    _prune(conv)
    net.set_iteration(0)
    net.before_train_forward()  # refit EPOCH_START at iteration 0
    v = (conv.weight * conv.weight_mask).detach().numpy()
    alpha = np_als(v.reshape(6, -1), 4, 100)  # T3: per-channel ALS, 100 iterations
    np.testing.assert_array_equal(conv.w_alpha.numpy(), alpha)
    assert alpha[2] == 0 and alpha[4] == 0 and (alpha[[0, 1, 3, 5]] > 0).all()
    x, y = batch(0)
    net(x=x, y=y)
    wq = np_wq(v, alpha, 4)
    assert np.isfinite(wq).all() and (wq[2] == 0).all() and (wq[4] == 0).all()  # all-zero rows: 0, not NaN
    codes = np.rint(wq.reshape(6, -1)[[0, 1, 3, 5]] / alpha[[0, 1, 3, 5], None])
    assert codes.min() >= -8 and codes.max() <= 7
    expected = F.conv2d(net.blobs["xq"], torch.from_numpy(wq), conv.bias * conv.bias_mask)
    assert torch.equal(net.blobs["c"][:, [0, 1, 2, 3, 5]], expected.relu()[:, [0, 1, 2, 3, 5]])
    torch.testing.assert_close(net.blobs["c"][:, 2], conv.bias[2].detach().relu().expand(4, 6, 6), rtol=0, atol=0)


def test_quant_conv_gradients_are_straight_through():
    # T3: dW == dWq (unmasked), the bottom diff uses Wq, db = d(b⊙m)
    net = make(net_text())
    conv = net.layer("conv")
    _prune(conv)
    conv.fit_alpha()
    x = batch(0)[0].requires_grad_()
    c = torch.randn(4, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    (conv(x) * c).sum().backward()
    wq = torch.from_numpy(np_wq((conv.weight * conv.weight_mask).detach().numpy(), conv.w_alpha.numpy(), 4))
    wq.requires_grad_()
    b = conv.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, wq, b) * c).sum().backward()
    assert torch.equal(conv.weight.grad, wq.grad)
    assert torch.equal(x.grad, x2.grad)
    assert torch.equal(conv.bias.grad, b.grad)
    assert (conv.weight.grad[conv.weight_mask == 0] != 0).any()  # pruned weights keep learning


def test_quant_conv_gradients_accumulate_unmasked():
    # iter_size 2: dW = dWq1 + dWq2 (the DNS rule would mask the first)
    net = make(net_text())
    conv = net.layer("conv")
    _prune(conv)
    conv.fit_alpha()
    x, y = batch(0)
    net(x=x, y=y)  # ActQuant calibrates (and passes the batch through) first
    grads = []
    for _ in range(2):
        net.before_backward()
        net(x=x, y=y)
        net.loss.backward()
        grads.append(conv.weight.grad.clone())
    torch.testing.assert_close(grads[1], 2 * grads[0], rtol=0, atol=0)


def test_quant_layer_mask_fillers_from_the_dns_param():
    fillers = ('dns_convolution_param { weight_mask_filler { type: "constant" value: 1 } '
               'bias_mask_filler { type: "constant" value: 0 } }')
    net = make(net_text(conv=fillers))
    conv = net.layer("conv")
    assert torch.all(conv.weight_mask == 1) and torch.all(conv.bias_mask == 0)
    x, y = batch(0)
    net(x=x, y=y)
    net(x=x, y=y)
    expected = F.conv2d(net.blobs["xq"], conv.effective_weight(), None).relu()
    assert torch.equal(net.blobs["c"], expected)


def test_quant_inner_product_rows_are_outputs():
    for transpose in (False, True):
        net = make(net_text(ip=f"transpose: {str(transpose).lower()}"))
        ip = net.layer("ip")
        w = (ip.weight.t() if transpose else ip.weight).detach().numpy()
        assert w.shape == (4, 216)
        alpha = np_als(w, 6, 100)  # the 6-bit FC of step 8
        np.testing.assert_array_equal(ip.w_alpha.numpy(), alpha)  # fitted when the layer is built
        wq = torch.from_numpy(np_wq(w, alpha, 6))
        torch.testing.assert_close(ip.effective_weight(), wq.t() if transpose else wq, rtol=0, atol=0)


def test_quant_per_tensor_scale():
    net = make(net_text(wq="per_channel: false als_iters: 30"))
    conv = net.layer("conv")
    v = conv.weight.detach().numpy().reshape(1, -1)
    np.testing.assert_array_equal(conv.w_alpha.numpy(), np.repeat(np_als(v, 4, 30), 6))


def _alpha_changes(net, iterations, calls_per_iter=1):
    """Iterations at which a TRAIN step refitted the conv's w_alpha (weights move before every forward)."""
    conv = net.layer("conv")
    changed = []
    g = torch.Generator().manual_seed(0)
    for it in iterations:
        net.set_iteration(it)
        for _ in range(calls_per_iter):
            with torch.no_grad():
                conv.weight.add_(0.05 * torch.randn(conv.weight.shape, generator=g))
            before = conv.w_alpha.clone()
            net.before_train_forward()
            if not torch.equal(before, conv.w_alpha):
                changed.append(it)
    return changed


def test_refit_epoch_start_every_iter_once(caplog):
    net = make(net_text())
    net.layer("conv").set_epoch_iters(3)  # what the solver does with its epoch_iters
    assert net.layer("conv").epoch_iters == 3
    # EPOCH_START: the first TRAIN forward of iterations 0, 3, 6 (iter_size 2: not twice in one iteration)
    assert _alpha_changes(net, range(8), calls_per_iter=2) == [0, 3, 6]
    net = make(net_text(wq="refit: EVERY_ITER"))
    assert _alpha_changes(net, range(4), calls_per_iter=2) == [0, 0, 1, 1, 2, 2, 3, 3]
    net = make(net_text(wq="refit: ONCE"))
    assert _alpha_changes(net, range(4)) == [0]
    net = make(net_text(wq="refit: ONCE"))
    net.load_extra_state({"conv": {"fitted": True}})  # a resumed run keeps the snapshot's scales
    assert _alpha_changes(net, range(2)) == []
    # without the epoch length: iteration 0 only, with a warning
    net = make(net_text())
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        assert _alpha_changes(net, range(5)) == [0]
    assert "refit EPOCH_START without the epoch length" in caplog.text


def test_snapshot_round_trip_keeps_the_buffers(tmp_path):
    net = make(net_text())
    _prune(net.layer("conv"))
    x, y = batch(0)
    net.set_iteration(0)
    net.before_train_forward()
    net(x=x, y=y)  # calibrates ActQuant
    path = str(tmp_path / "q.caffemodel")
    net.save(path)
    model = ncio.read_caffemodel(path)
    assert [(l.name, len(l.blobs)) for l in model.layer if l.blobs] == [("act", 2), ("conv", 5), ("ip", 5)]
    again = make(net_text(), seed=7)
    again.copy_from(path)
    for name in ("act", "conv", "ip"):
        for a, b in zip(net.layer(name).blobs(), again.layer(name).blobs()):
            assert torch.equal(a, b)
    x2, _ = batch(1)
    net(x=x2, y=y)
    again(x=x2, y=y)
    assert torch.equal(net.blobs["z"], again.blobs["z"])
    path2 = str(tmp_path / "q2.caffemodel")
    again.save(path2)
    assert open(path, "rb").read() == open(path2, "rb").read()


def test_weights_without_scales_get_fitted_on_load(tmp_path):
    # a DNS-layout model (4 blobs: no w_alpha) and a normal model (2 blobs) load into the quantized net
    dns = net_text().replace("QuantConvolution", "DNSConvolution").replace("QuantInnerProduct", "InnerProduct")
    dns = dns.replace("weight_quant_param { bitwidth: 4  }", 'dns_convolution_param { weight_mask_filler { '
                      'type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 } }')
    dns = dns.replace("weight_quant_param { bitwidth: 6 }", "")
    assert "dns_convolution_param" in dns and "weight_quant_param" not in dns
    src = make(dns, seed=3)
    _prune(src.layer("conv"))
    path = str(tmp_path / "dns.caffemodel")
    src.save(path)
    net = make(net_text(), seed=4)
    net.copy_from(path)
    conv = net.layer("conv")
    assert torch.equal(conv.weight_mask, src.layer("conv").weight_mask)
    v = (conv.weight * conv.weight_mask).detach().numpy().reshape(6, -1)
    np.testing.assert_array_equal(conv.w_alpha.numpy(), np_als(v, 4))
    ip_w = net.layer("ip").weight.detach().numpy()
    np.testing.assert_array_equal(net.layer("ip").w_alpha.numpy(), np_als(ip_w, 6))


def test_solver_resume_is_bit_identical(tmp_path):
    # ActQuant calibrates at iteration 0; the conv refits at the first iteration of each 3-iteration epoch; a run
    # resumed from the iteration-4 snapshot ends with the same bytes as the uninterrupted one.
    def solver(prefix):
        sp = pb.SolverParameter(base_lr=0.05, lr_policy="fixed", max_iter=8, momentum=0.9, weight_decay=1e-3,
                                snapshot=4, snapshot_prefix=str(tmp_path / prefix), random_seed=1,
                                solver_mode=pb.SolverParameter.CPU)
        text_format.Parse(net_text(), sp.net_param)
        s = Solver(sp, verbose=False)
        x, y = batch(0)
        s.net.set_input(x=x, y=y)
        s.net.layer("conv").set_epoch_iters(3)
        s.net.layer("ip").set_epoch_iters(3)
        return s

    full = solver("full")
    full.solve()
    alpha_4 = ncio.read_caffemodel(str(tmp_path / "full_iter_4.caffemodel"))
    alpha_8 = ncio.read_caffemodel(str(tmp_path / "full_iter_8.caffemodel"))
    conv4 = [l for l in alpha_4.layer if l.name == "conv"][0]
    conv8 = [l for l in alpha_8.layer if l.name == "conv"][0]
    assert list(conv4.blobs[4].data) != list(conv8.blobs[4].data)  # refitted at iteration 6
    act4 = [l for l in alpha_4.layer if l.name == "act"][0]
    act8 = [l for l in alpha_8.layer if l.name == "act"][0]
    assert act4.blobs[0].data[0] > 0 and list(act4.blobs[0].data) == list(act8.blobs[0].data)  # frozen
    resumed = solver("resumed")
    resumed.solve(resume_file=str(tmp_path / "full_iter_4.solverstate"))
    assert (tmp_path / "full_iter_8.caffemodel").read_bytes() == (tmp_path / "resumed_iter_8.caffemodel").read_bytes()


# ---- IntQuant ------------------------------------------------------------------------------------------------

def test_int_quant_layer(make_layer):
    layer = make_layer("type: 'IntQuant'", (2, 5))
    x = torch.tensor([[-1.0, 0.5, 1.5, 2.5, 14.6], [15.5, 16.0, 7.49, -0.4, 3.0]], dtype=torch.float64,
                     requires_grad=True)
    y = layer(x)
    assert y.tolist() == [[0.0, 0.0, 2.0, 2.0, 15.0], [15.0, 15.0, 7.0, 0.0, 3.0]]
    y.sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0]]
    assert layer.blob_names == [] and layer.top_shapes([(2, 5)]) == [(2, 5)]
    layer = make_layer("type: 'IntQuant' int_quant_param { low: -8 high: 7 }", (3,))
    assert layer(torch.tensor([-9.0, 6.5, 7.5], dtype=torch.float64)).tolist() == [-8.0, 6.0, 7.0]
    with pytest.raises(NetDefinitionError, match="int_quant_param.low must not exceed high, got 3 and 1"):
        make_layer("type: 'IntQuant' int_quant_param { low: 3 high: 1 }", (3,))


def test_compile_smoke():
    net = make(net_text())
    x, y = batch(0)
    net(x=x, y=y)  # calibrate
    act, conv = net.layer("act"), net.layer("conv")

    def unit(x):
        return conv(act(x))

    x2 = batch(1)[0]
    eager = unit(x2)
    compiled = torch.compile(unit, backend="aot_eager")
    torch.testing.assert_close(compiled(x2), eager, rtol=0, atol=0)
