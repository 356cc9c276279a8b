"""KnowledgeDistillationLoss (recipes-spec 5.2, T9) against NumPy formulas, and a teacher inside a
student's net trained by the Solver (frozen parameters, BatchNorm statistics, the lr_mult warning)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError
from netcompress.layers.distill import check_teachers, teacher_layers
from netcompress.proto import caffe_pb2 as pb

FLT_MIN = float(np.finfo(np.float32).tiny)
MODES = ("HINTON", "SOFT_CE", "KL", "KL_REVERSE", "LOGIT_MSE")


def rand(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def labels(shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randint(0, classes, shape, generator=g).to(torch.float64)


def np_log_softmax(z, axis=1):
    m = z.max(axis=axis, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=axis, keepdims=True))


def kd_reference(s, t, mode, T=1.0, soft=1.0, hard=0.0, t2=True, label=None, ignore=None, norm="VALID"):
    """The loss of recipes-spec 5.2, written directly in NumPy on (N, K, H, W...) logits (axis 1)."""
    s, t = s.numpy(), t.numpy()
    N, K = s.shape[:2]
    inner = int(np.prod(s.shape[2:]))
    s3, t3 = s.reshape(N, K, inner), t.reshape(N, K, inner)
    if mode == "LOGIT_MSE":
        per = ((s3 - t3) ** 2).sum(axis=1) / K
        c = 1.0
    else:
        ls, lt = np_log_softmax(s3 / T), np_log_softmax(t3 / T)
        ps, pt = np.exp(ls), np.exp(lt)
        per = {"HINTON": (pt * (lt - ls)).sum(1), "KL": (pt * (lt - ls)).sum(1),
               "SOFT_CE": -(pt * ls).sum(1), "KL_REVERSE": (ps * (ls - lt)).sum(1)}[mode]
        c = T * T if t2 else 1.0
    per = soft * c * per
    valid = np.ones((N, inner), dtype=bool)
    if label is not None:
        lab = label.numpy().reshape(N, inner).astype(np.int64)
        if ignore is not None:
            valid = lab != ignore
        if hard:
            l1 = np_log_softmax(s3)
            nll = np.zeros((N, inner))
            for n in range(N):
                for j in range(inner):
                    if valid[n, j]:
                        nll[n, j] = -max(l1[n, lab[n, j], j], np.log(FLT_MIN))
            per = per + hard * nll
    total = per[valid].sum()
    denom = {"VALID": valid.sum(), "FULL": N * inner, "BATCH_SIZE": N, "NONE": 1}[norm]
    return total / max(1, denom)


def kd_layer(make_layer, shapes, mode="HINTON", extra="", dtype=torch.float64):
    return make_layer(f'type: "KnowledgeDistillationLoss" kd_param {{ mode: {mode} {extra} }}', *shapes,
                      dtype=dtype)


# --- values and gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_each_mode_against_the_numpy_formula(make_layer, mode, T):
    s, t = rand(6, 10, seed=1), rand(6, 10, seed=2)
    layer = kd_layer(make_layer, [(6, 10), (6, 10)], mode, f"temperature: {T}")
    got = float(layer(s, t))
    assert got == pytest.approx(kd_reference(s, t, mode, T=T), rel=1e-12, abs=1e-14)
    # scale_by_t2: false drops the T^2 factor of the softmax modes
    layer = kd_layer(make_layer, [(6, 10), (6, 10)], mode, f"temperature: {T} scale_by_t2: false soft_weight: 0.75")
    assert float(layer(s, t)) == pytest.approx(kd_reference(s, t, mode, T=T, soft=0.75, t2=False), rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_spatial_logits_with_hard_term_and_gradcheck(make_layer, mode):
    # (N, K, H, W): one distribution per position, as SoftmaxWithLoss; the hard term at T = 1.
    s, t, y = rand(2, 5, 3, 2, seed=3), rand(2, 5, 3, 2, seed=4), labels((2, 3, 2), 5)
    layer = kd_layer(make_layer, [s.shape, t.shape, y.shape], mode,
                     "temperature: 3 soft_weight: 0.625 hard_weight: 0.375")
    assert float(layer(s, t, y)) == pytest.approx(
        kd_reference(s, t, mode, T=3, soft=0.625, hard=0.375, label=y), rel=1e-12)
    assert gradcheck(lambda a: layer(a, t, y), (s.clone().requires_grad_(),))


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_hinton_gradient_has_the_t_squared_factor(make_layer, T):
    # d/ds = T (softmax(s/T) - softmax(t/T)) / N * soft_weight + hard_weight (softmax(s) - onehot) / N
    N, K = 8, 7
    s, t, y = rand(N, K, seed=5), rand(N, K, seed=6), labels((N,), K)
    sw, hw = 0.75, 0.25
    layer = kd_layer(make_layer, [(N, K), (N, K), (N,)], "HINTON",
                     f"temperature: {T} soft_weight: {sw} hard_weight: {hw}")
    x = s.clone().requires_grad_()
    layer(x, t, y).backward()
    ps_T = torch.softmax(s / T, dim=1)
    pt_T = torch.softmax(t / T, dim=1)
    onehot = torch.nn.functional.one_hot(y.long(), K).double()
    expected = T * (ps_T - pt_T) / N * sw + hw * (torch.softmax(s, dim=1) - onehot) / N
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-15)


def test_kl_reverse_matches_micronet_kldiv_1_computed_the_source_way(make_layer):
    # seed 004 loss/loss.py: p_s = softmax(s), p_t = softmax(t), mean_n sum_k p_s * log(p_s / p_t),
    # in float32 with logs of probabilities (Q17). Non-degenerate inputs: no probability underflows.
    N, K = 64, 100
    s, t = rand(N, K, seed=7, scale=3.0).float(), rand(N, K, seed=8, scale=3.0).float()
    p_s, p_t = torch.softmax(s, dim=1), torch.softmax(t, dim=1)
    assert float(p_s.min()) > 1e-12 and float(p_t.min()) > 1e-12
    micronet = (p_s * torch.log(p_s / p_t)).sum(dim=1).mean()
    layer = kd_layer(make_layer, [(N, K), (N, K)], "KL_REVERSE", dtype=torch.float32)
    got = layer(s, t)
    assert got.dtype == torch.float32
    assert abs(float(got) - float(micronet)) < 1e-6
    # kldiv:0 and ce:0 likewise
    for mode, ref in (("KL", (p_t * torch.log(p_t / p_s)).sum(dim=1).mean()),
                      ("SOFT_CE", -(p_t * torch.log(p_s)).sum(dim=1).mean())):
        layer = kd_layer(make_layer, [(N, K), (N, K)], mode, dtype=torch.float32)
        assert abs(float(layer(s, t)) - float(ref)) < 1e-6, mode


@pytest.mark.parametrize("norm", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
def test_ignore_label_and_normalization(make_layer, norm):
    s, t = rand(3, 4, 2, 2, seed=9), rand(3, 4, 2, 2, seed=10)
    y = labels((3, 2, 2), 4)
    y[0, 0, 0] = y[2, 1, 1] = y[1, 0, 1] = 255
    snippet = (f'type: "KnowledgeDistillationLoss" kd_param {{ mode: HINTON temperature: 2 hard_weight: 0.5 '
               f'ignore_label: 255 }} loss_param {{ normalization: {norm} }}')
    layer = make_layer(snippet, s.shape, t.shape, y.shape)
    x = s.clone().requires_grad_()
    loss = layer(x, t, y)
    assert float(loss.detach()) == pytest.approx(kd_reference(s, t, "HINTON", T=2, hard=0.5, label=y, ignore=255,
                                                     norm=norm), rel=1e-12)
    loss.backward()
    # ignored positions get no gradient at all
    for n, h, w in ((0, 0, 0), (2, 1, 1), (1, 0, 1)):
        assert torch.count_nonzero(x.grad[n, :, h, w]) == 0
    # loss_param.ignore_label is read too, when kd_param has none
    layer2 = make_layer(snippet.replace("ignore_label: 255 }", "}").replace(
        f"normalization: {norm}", f"normalization: {norm} ignore_label: 255"), s.shape, t.shape, y.shape)
    assert float(layer2(s, t, y)) == pytest.approx(float(loss.detach()), rel=1e-14)


def test_deprecated_normalize_false_is_batch_size(make_layer):
    s, t, y = rand(4, 3, 5, seed=11), rand(4, 3, 5, seed=12), labels((4, 5), 3)
    layer = make_layer('type: "KDLoss" kd_param { mode: KL } loss_param { normalize: false }', s.shape, t.shape, y.shape)
    assert float(layer(s, t, y)) == pytest.approx(kd_reference(s, t, "KL", label=y, norm="BATCH_SIZE"), rel=1e-12)


def test_no_gradient_reaches_the_teacher_bottom(make_layer):
    s, t, y = rand(5, 6, seed=13), rand(5, 6, seed=14), labels((5,), 6)
    for mode in MODES:
        layer = kd_layer(make_layer, [s.shape, t.shape, y.shape], mode, "temperature: 2 hard_weight: 0.5")
        xs, xt = s.clone().requires_grad_(), t.clone().requires_grad_()
        layer(xs, xt, y).backward()
        assert xs.grad is not None and torch.count_nonzero(xs.grad) > 0
        assert xt.grad is None, mode


def test_alias_defaults_and_top_shape(make_layer):
    layer = make_layer('type: "KDLoss"', (4, 10), (4, 10))
    assert layer.type_name == "KDLoss" and layer.mode_name == "HINTON"
    assert (layer.temperature, layer.soft_weight, layer.hard_weight, layer.soft_scale) == (1.0, 1.0, 0.0, 1.0)
    assert layer.is_loss and layer.top_shapes([(4, 10), (4, 10)]) == [()]


@pytest.mark.cuda
def test_cuda_matches_cpu(make_layer):
    s, t, y = rand(16, 10, seed=15), rand(16, 10, seed=16), labels((16,), 10)
    for mode in MODES:
        layer = kd_layer(make_layer, [s.shape, t.shape, y.shape], mode, "temperature: 3 hard_weight: 0.2")
        xc = s.clone().requires_grad_()
        lc = layer(xc, t, y)
        lc.backward()
        xg = s.cuda().requires_grad_()
        lg = layer(xg, t.cuda(), y.cuda())
        lg.backward()
        torch.testing.assert_close(lg.cpu(), lc)
        torch.testing.assert_close(xg.grad.cpu(), xc.grad)


# --- bad input -----------------------------------------------------------------------------------

def test_bottoms_of_different_shapes_are_refused(make_layer):
    with pytest.raises(NetDefinitionError) as e:
        make_layer('name: "kd" type: "KnowledgeDistillationLoss" bottom: "ip2" bottom: "t_ip2"', (4, 10), (4, 12))
    assert str(e.value) == ("layer 'kd' (type KnowledgeDistillationLoss): the student logits (bottom 0 'ip2') "
                            "and the teacher logits (bottom 1 't_ip2') must have the same shape, got [4, 10] "
                            "and [4, 12]")


def test_other_bad_parameters(make_layer):
    with pytest.raises(NetDefinitionError, match=r"kd_param.hard_weight is 0.5: the hard term needs the label "
                                                 r"as bottom 2"):
        make_layer('type: "KDLoss" kd_param { hard_weight: 0.5 }', (4, 10), (4, 10))
    with pytest.raises(NetDefinitionError, match="ignore_label -1 needs the label as bottom 2"):
        make_layer('type: "KDLoss" kd_param { ignore_label: -1 }', (4, 10), (4, 10))
    with pytest.raises(NetDefinitionError, match="temperature must be positive, got 0.0"):
        make_layer('type: "KDLoss" kd_param { temperature: 0 }', (4, 10), (4, 10))
    with pytest.raises(NetDefinitionError, match=r"the label count \(8\) must equal the prediction count "
                                                 r"outer\*inner = 4\*1"):
        make_layer('type: "KDLoss"', (4, 10), (4, 10), (4, 2))


# --- a teacher inside the student's net, trained by the Solver -----------------------------------

FROZEN = "param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }"
FILL = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 }'


def kd_net(bn: str = "", t_fc_param: str = FROZEN) -> str:
    return f"""
name: "kd"
layer {{ name: "data" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 8 dim: 2 dim: 5 dim: 5 }} shape {{ dim: 8 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 3 kernel_size: 3 {FILL} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param {{ num_output: 4 {FILL} }} }}
layer {{ name: "t_conv" type: "Convolution" bottom: "data" top: "t_conv" {FROZEN}
  convolution_param {{ num_output: 5 kernel_size: 3 {FILL} }} }}
layer {{ name: "t_bn" type: "BatchNorm" bottom: "t_conv" top: "t_conv" {bn} }}
layer {{ name: "t_scale" type: "Scale" bottom: "t_conv" top: "t_conv" {FROZEN} scale_param {{ bias_term: true }} }}
layer {{ name: "t_relu" type: "ReLU" bottom: "t_conv" top: "t_conv" }}
layer {{ name: "t_fc" type: "InnerProduct" bottom: "t_conv" top: "t_fc" {t_fc_param}
  inner_product_param {{ num_output: 4 {FILL} }} }}
layer {{ name: "kd" type: "KnowledgeDistillationLoss" bottom: "fc" bottom: "t_fc" bottom: "label" top: "kd_loss"
  kd_param {{ temperature: 2 hard_weight: 0.5 }} }}
"""


def kd_solver(net_text: str):
    from netcompress.solvers import Solver

    sp = pb.SolverParameter()
    text_format.Parse(net_text, sp.net_param)
    sp.base_lr, sp.lr_policy, sp.momentum, sp.weight_decay = 0.5, "fixed", 0.9, 0.01
    sp.max_iter, sp.random_seed, sp.display = 10, 3, 0
    solver = Solver(sp, verbose=False)
    g = torch.Generator().manual_seed(0)
    solver.net.set_input(data=torch.randn(8, 2, 5, 5, generator=g),
                         label=torch.randint(0, 4, (8,), generator=g).float())
    return solver


def _snapshot(net, names):
    return {n: [b.detach().clone() for b in net.layer(n).blobs()] for n in names}


@pytest.mark.parametrize("global_stats", [None, "false", "true"])
def test_teacher_is_frozen_and_bn_statistics_move_iff_batch_statistics(global_stats):
    bn = "" if global_stats is None else f"batch_norm_param {{ use_global_stats: {global_stats} }}"
    solver = kd_solver(kd_net(bn))
    net = solver.net
    bn_layer = net.layer("t_bn")
    with torch.no_grad():  # running statistics a global-stats BatchNorm can use
        bn_layer.mean.copy_(torch.linspace(-0.2, 0.2, 5))
        bn_layer.variance.fill_(2.0)
        bn_layer.scale_factor.fill_(1.0)
    before = _snapshot(net, ["conv", "fc", "t_conv", "t_bn", "t_scale", "t_fc"])
    solver.step(2)
    after = _snapshot(net, ["conv", "fc", "t_conv", "t_bn", "t_scale", "t_fc"])
    assert np.isfinite(float(net.loss.detach()))
    for name in ("t_conv", "t_scale", "t_fc"):
        for a, b in zip(before[name], after[name]):
            assert torch.equal(a, b), name
    for name in ("conv", "fc"):
        assert not torch.equal(before[name][0], after[name][0]), name
    # TRAIN: use_global_stats unset means batch statistics (Caffe), i.e. MicroNet's train-mode teacher
    moved = [not torch.equal(a, b) for a, b in zip(before["t_bn"], after["t_bn"])]
    assert moved == ([False] * 3 if global_stats == "true" else [True] * 3)
    if global_stats != "true":
        assert float(after["t_bn"][2]) == pytest.approx(1.0 * 0.999 ** 2 + 0.999 + 1.0)


def test_teacher_layers_walk_back_from_bottom_1(make_net):
    net = make_net(kd_net(), phase=pb.TRAIN)
    assert teacher_layers(net, "kd") == ["t_conv", "t_bn", "t_scale", "t_relu", "t_fc"]
    assert check_teachers(net) == []


def test_teacher_layer_with_nonzero_lr_mult_gets_a_warning(caplog):
    text = kd_net(t_fc_param="param { lr_mult: 1 } param { lr_mult: 2 }")
    with caplog.at_level(logging.WARNING, logger="netcompress"):
        solver = kd_solver(text)
    msg = ("layer 't_fc' computes the teacher logits 't_fc' of KD layer 'kd' but has lr_mult 1 (param 0): "
           "the solver will train it; give the teacher's layers param { lr_mult: 0 decay_mult: 0 }")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [msg]
    # and it does change: the warning is about a real effect
    before = solver.net.layer("t_fc").weight.detach().clone()
    solver.step(1)
    assert not torch.equal(before, solver.net.layer("t_fc").weight)


def test_teacher_sharing_the_students_weights_gets_a_warning(make_net):
    # t_fc's own spec says nothing, but its weight is the student's fc weight (lr_mult 1)
    text = kd_net(t_fc_param='param { name: "w" } param { lr_mult: 0 }')
    text = text.replace('top: "fc" inner_product_param', 'top: "fc" param { name: "w" } inner_product_param')
    text = text.replace("num_output: 5 kernel_size: 3", "num_output: 3 kernel_size: 3")
    net = make_net(text, phase=pb.TRAIN)
    assert check_teachers(net) == [
        "layer 't_fc' computes the teacher logits 't_fc' of KD layer 'kd' but has lr_mult 1 (param 0): the "
        "solver will train it; give the teacher's layers param { lr_mult: 0 decay_mult: 0 }"]
