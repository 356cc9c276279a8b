"""MixedPooling and SDNLoss (recipes-spec 5.2, T7) against closed forms, torch.nn.functional and
NumPy transcriptions of the SDN / INRIA formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from netcompress.errors import NetDefinitionError
from netcompress.proto import caffe_pb2 as pb
from netcompress.rng import CaffeRNG


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def labels(n, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, classes, (n,), generator=g).to(torch.float64)


# --- MixedPooling -------------------------------------------------------------------------------------

def mixed(alpha=None, geometry="kernel_size: 8 stride: 8"):
    filler = "" if alpha is None else f"alpha_filler {{ type: 'constant' value: {alpha} }}"
    return f'type: "MixedPooling" mixed_pooling_param {{ {geometry} {filler} }}'


def test_mixed_pooling_is_the_sdn_ic_formula(make_layer):
    # SDN's IC on a 32x32 map: r = 8, so 16 x 4 x 4 features.
    layer = make_layer(mixed(0.3), (2, 16, 32, 32))
    x = rand(2, 16, 32, 32)
    y = layer(x)
    assert layer.top_shapes([(2, 16, 32, 32)]) == [(2, 16, 4, 4)]
    expected = 0.3 * F.max_pool2d(x, 8, 8) + 0.7 * F.avg_pool2d(x, 8, 8)
    torch.testing.assert_close(y, expected)


def test_mixed_pooling_alpha_gradient_is_sum_of_max_minus_avg_times_dy(make_layer):
    layer = make_layer(mixed(0.6, "kernel_size: 2 stride: 2"), (2, 3, 6, 6))
    x = rand(2, 3, 6, 6, seed=1).requires_grad_()
    dy = rand(2, 3, 3, 3, seed=2)
    (layer(x) * dy).sum().backward()
    mx, av = F.max_pool2d(x.detach(), 2, 2), F.avg_pool2d(x.detach(), 2, 2)
    torch.testing.assert_close(layer.alpha.grad, ((mx - av) * dy).sum().reshape(1))
    # dL/dx: alpha routes dy to the argmax, (1 - alpha) spreads it over the window.
    x2 = x.detach().clone().requires_grad_()
    (0.6 * F.max_pool2d(x2, 2, 2) * dy + 0.4 * F.avg_pool2d(x2, 2, 2) * dy).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("geometry", ["kernel_size: 8 stride: 8", "kernel_size: 3 stride: 2 pad: 1",
                                      "kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2"])
def test_mixed_pooling_gradcheck_input_and_alpha(make_layer, geometry):
    layer = make_layer(mixed(None, geometry), (2, 2, 9, 9), seed=3)
    x = rand(2, 2, 9, 9, seed=4)

    def f(inp, alpha):
        # alpha enters as an input so that gradcheck perturbs it too
        return torch.func.functional_call(layer, {"alpha": alpha}, (inp,))

    alpha = torch.tensor([0.35], dtype=torch.float64, requires_grad=True)
    assert gradcheck(f, (x.clone().requires_grad_(), alpha))


def test_mixed_pooling_uses_caffe_pooling_geometry(make_layer):
    # 5x5, kernel 2, stride 2: Caffe rounds up to 3x3 (the last window overhangs), as Pooling does.
    layer = make_layer(mixed(0.5, "kernel_size: 2 stride: 2"), (1, 1, 5, 5))
    pool_max = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }', (1, 1, 5, 5))
    pool_ave = make_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }', (1, 1, 5, 5))
    x = rand(1, 1, 5, 5, seed=5)
    assert layer.top_shapes([(1, 1, 5, 5)]) == [(1, 1, 3, 3)]
    torch.testing.assert_close(layer(x), 0.5 * pool_max(x) + 0.5 * pool_ave(x))


def test_mixed_pooling_alpha_is_not_clamped(make_layer):
    layer = make_layer(mixed(1.5, "kernel_size: 2 stride: 2"), (1, 2, 4, 4))
    x = rand(1, 2, 4, 4, seed=6)
    torch.testing.assert_close(layer(x), 1.5 * F.max_pool2d(x, 2) - 0.5 * F.avg_pool2d(x, 2))


def test_mixed_pooling_default_alpha_is_uniform_0_1_from_the_caffe_stream(make_layer):
    layer = make_layer(mixed(None), (1, 1, 8, 8), seed=11)
    expected = CaffeRNG(11).uniform(1, 0.0, 1.0)
    alpha = layer.alpha.detach().item()
    assert layer.alpha.shape == (1,) and 0.0 <= alpha <= 1.0
    assert alpha == float(expected[0])
    assert layer.blob_names == ["alpha"] and layer.blob_is_learnable(0)


def test_mixed_pooling_in_a_net_is_one_learnable_blob(make_net):
    net = make_net("""
        layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 8 dim: 8 } } }
        layer { name: "ic1_pool" type: "MixedPooling" bottom: "data" top: "p"
                mixed_pooling_param { kernel_size: 2 stride: 2 } param { lr_mult: 1 decay_mult: 0 } }
    """, seed=5)
    assert [(e.layer, e.index, e.learnable, e.decay_mult) for e in net.learnable_params()] == \
        [("ic1_pool", 0, True, 0.0)]
    assert list(net.state_dict()) == ["layers.ic1_pool.alpha"]
    out = net(rand(2, 4, 8, 8))["p"]
    assert out.shape == (2, 4, 4, 4)


@pytest.mark.parametrize("snippet,shape,message", [
    ('type: "MixedPooling" mixed_pooling_param { stride: 2 }', (1, 1, 4, 4), "needs kernel_size"),
    ('type: "MixedPooling" mixed_pooling_param { kernel_size: 2 kernel_h: 2 kernel_w: 2 }', (1, 1, 4, 4),
     "not both"),
    ('type: "MixedPooling" mixed_pooling_param { kernel_size: 2 }', (4, 4), "4-D bottom"),
    ('type: "MixedPooling" mixed_pooling_param { kernel_size: 2 pad: 2 }', (1, 1, 4, 4), "smaller than the kernel"),
])
def test_mixed_pooling_errors_name_the_layer(make_layer, snippet, shape, message):
    with pytest.raises(NetDefinitionError, match=message) as e:
        make_layer(snippet, shape)
    assert "layer 'layer' (type MixedPooling)" in str(e.value)


# --- SDNLoss: coefficients ----------------------------------------------------------------------------

def sdn_loss(make_layer, n_outputs, extra="", phase=pb.TRAIN, classes=5, batch=4):
    shapes = [(batch, classes)] * n_outputs + [(batch,)]
    return make_layer(f'type: "SDNLoss" sdn_loss_param {{ {extra} }}', *shapes, phase=phase)


def test_sdn_policy_coefficients_at_epoch_1_of_100(make_layer):
    # T7: SDN policy at e = 1, E = 100 gives 0.01 + [0.15, ..., 0.9] / 100.
    layer = sdn_loss(make_layer, 7, "epoch_iters: 390")
    assert layer.max_coeff == [0.15, 0.3, 0.45, 0.6, 0.75, 0.9]
    expected = [0.01 + m / 100 for m in (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)]
    assert layer.coefficients() == pytest.approx(expected, rel=1e-15)
    assert layer.coefficients()[0] == pytest.approx(0.0115, rel=1e-15)


def test_inria_policy_max_coefficients_for_four_outputs(make_layer):
    # T7: INRIA with n = 4 outputs: max = [0.26, 0.51, 0.76]; E = 250 as in mode '0'.
    layer = sdn_loss(make_layer, 4, "policy: INRIA ramp_epochs: 250 epoch_iters: 10")
    assert layer.max_coeff == pytest.approx([0.26, 0.51, 0.76], rel=1e-15)
    layer.set_iteration(0)
    assert layer.coefficients() == pytest.approx([0.01 + 1 * m / 250 for m in (0.26, 0.51, 0.76)], rel=1e-15)
    layer.set_iteration(10 * 99 + 9)  # epoch 100
    assert layer.coefficients() == pytest.approx([0.01 + 100 * m / 250 for m in (0.26, 0.51, 0.76)], rel=1e-15)
    layer.set_iteration(10 * 249)  # epoch 250: 0.01 + max saturates at max
    assert layer.coefficients() == pytest.approx([0.26, 0.51, 0.76], rel=1e-15)
    # two outputs (the first growth stage): max = 0.01 + 1/2
    assert sdn_loss(make_layer, 2, "policy: INRIA").max_coeff == pytest.approx([0.51], rel=1e-15)


def test_epoch_is_floor_of_iteration_over_epoch_iters_plus_one(make_layer):
    layer = sdn_loss(make_layer, 2, "epoch_iters: 10 ramp_epochs: 4 max_coeff: 0.4")
    seen = {}
    for it in (0, 9, 10, 19, 20, 35, 1000):
        layer.set_iteration(it)
        seen[it] = (layer.epoch(), layer.coefficients()[0])
    assert {k: v[0] for k, v in seen.items()} == {0: 1, 9: 1, 10: 2, 19: 2, 20: 3, 35: 4, 1000: 101}
    # c = min(0.4, 0.01 + e * 0.4 / 4)
    assert seen[0][1] == pytest.approx(0.11) and seen[20][1] == pytest.approx(0.31)
    assert seen[35][1] == pytest.approx(0.4) and seen[1000][1] == pytest.approx(0.4)


def test_custom_max_coeff_and_start(make_layer):
    layer = sdn_loss(make_layer, 3, "max_coeff: 0.5 max_coeff: 0.8 start: 0.1 ramp_epochs: 10 epoch_iters: 1")
    layer.set_iteration(2)  # e = 3
    assert layer.coefficients() == pytest.approx([0.1 + 3 * 0.5 / 10, 0.1 + 3 * 0.8 / 10], rel=1e-15)


def test_epoch_length_from_the_param_or_the_solver(make_layer):
    layer = sdn_loss(make_layer, 2, "")
    x, lab = rand(4, 5), labels(4, 5)
    with pytest.raises(NetDefinitionError, match=r"layer 'layer' \(type SDNLoss\): needs the epoch length"):
        layer(x, x, lab)
    layer.epoch_iters = 7  # what the solver sets from its epoch_iters
    layer.set_iteration(14)
    assert layer.epoch() == 3
    own = sdn_loss(make_layer, 2, "epoch_iters: 5")
    own.epoch_iters = 7  # the layer's own field wins
    own.set_iteration(14)
    assert own.epoch() == 3 and own.epoch_length() == 5
    # a TEST net without an epoch length reports epoch 1; a single output needs no schedule
    assert sdn_loss(make_layer, 2, "", phase=pb.TEST).coefficients() == pytest.approx([0.0115])
    torch.testing.assert_close(sdn_loss(make_layer, 1, "")(x, lab),
                               F.cross_entropy(x, lab.long()))


def test_coefficient_override_for_snip_scoring(make_layer):
    layer = sdn_loss(make_layer, 3, "")  # TRAIN, no epoch length: the override needs none
    outs, lab = [rand(4, 5, seed=i) for i in range(3)], labels(4, 5)
    layer.coefficient_override = 1.0
    assert layer.coefficients() == [1.0, 1.0]
    torch.testing.assert_close(layer(*outs, lab), sum(F.cross_entropy(o, lab.long()) for o in outs))
    layer.coefficient_override = None
    with pytest.raises(NetDefinitionError, match="needs the epoch length"):
        layer(*outs, lab)


def test_sdn_loss_configuration_errors(make_layer):
    with pytest.raises(NetDefinitionError, match="6 internal classifiers need 6 max_coeff values, got 2"):
        sdn_loss(make_layer, 7, "max_coeff: 0.1 max_coeff: 0.2")
    with pytest.raises(NetDefinitionError, match="7 internal classifiers need 7"):
        sdn_loss(make_layer, 8, "")
    with pytest.raises(NetDefinitionError, match="max_coeff is for policy SDN"):
        sdn_loss(make_layer, 3, "policy: INRIA max_coeff: 0.5")
    with pytest.raises(NetDefinitionError, match="ramp_epochs must be positive"):
        sdn_loss(make_layer, 2, "ramp_epochs: 0")
    with pytest.raises(NetDefinitionError, match=r"type SDNLoss.*label count \(4\).*output bottom 'b1'"):
        make_layer('type: "SDNLoss"', (4, 5), (4, 5, 2), (4,))


# --- SDNLoss: value and gradients ---------------------------------------------------------------------

def reference_sdn_loss(outs, label, coeffs, ignore=None, mode="VALID"):
    """NumPy: sum_i c_i CE_i + CE_n, CE = Caffe's SoftmaxWithLoss; the gradient of each output."""
    lab = label.numpy().astype(np.int64)
    valid = np.ones_like(lab, dtype=bool) if ignore is None else lab != ignore
    weights = list(coeffs) + [1.0]
    total, grads = 0.0, []
    for w, out in zip(weights, outs):
        x = out.numpy()
        z = x - x.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        safe = np.where(valid, lab, 0)
        nll = -logp[np.arange(len(lab)), safe]
        norm = {"VALID": max(1, int(valid.sum())), "BATCH_SIZE": len(lab), "NONE": 1}[mode]
        total += w * float(np.where(valid, nll, 0).sum()) / norm
        g = p.copy()
        g[np.arange(len(lab)), safe] -= 1
        g[~valid] = 0
        grads.append(torch.from_numpy(w * g / norm))
    return total, grads


@pytest.mark.parametrize("policy,loss_param", [
    ("policy: SDN", ""),
    ("policy: INRIA ramp_epochs: 3", "loss_param { ignore_label: 1 }"),
    ("policy: SDN", "loss_param { normalization: BATCH_SIZE }"),
])
def test_sdn_loss_value_and_gradients_match_the_formula(make_layer, policy, loss_param):
    n, N, C = 4, 6, 5
    layer = make_layer(f'type: "SDNLoss" sdn_loss_param {{ {policy} epoch_iters: 2 }} {loss_param}',
                       *[(N, C)] * n, (N,), phase=pb.TRAIN)
    layer.set_iteration(3)  # epoch 2
    outs = [rand(N, C, seed=10 + i) * 2 for i in range(n)]
    lab = labels(N, C, seed=3)
    lab[0] = 1.0
    ignore = 1 if "ignore_label" in loss_param else None
    mode = "BATCH_SIZE" if "BATCH_SIZE" in loss_param else "VALID"
    if "INRIA" in policy:
        coeffs = [min(m, 0.01 + 2 * m / 3) for m in (0.26, 0.51, 0.76)]
    else:
        coeffs = [min(m, 0.01 + 2 * m / 100) for m in (0.15, 0.3, 0.45)]
    assert layer.coefficients() == pytest.approx(coeffs, rel=1e-15)
    ref, ref_grads = reference_sdn_loss(outs, lab, coeffs, ignore, mode)
    xs = [o.clone().requires_grad_() for o in outs]
    loss = layer(*xs, lab)
    torch.testing.assert_close(loss, torch.tensor(ref, dtype=torch.float64))
    loss.backward()
    for x, g in zip(xs, ref_grads):
        torch.testing.assert_close(x.grad, g)
    assert gradcheck(lambda *o: layer(*o, lab), tuple(o.clone().requires_grad_() for o in outs))


def test_sdn_loss_in_a_net_trains_every_classifier(make_net):
    net = make_net("""
        layer { name: "data" type: "Input" top: "data" top: "label"
                input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
        layer { name: "ic1" type: "InnerProduct" bottom: "data" top: "ic1"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "final" type: "InnerProduct" bottom: "data" top: "final"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "loss" type: "SDNLoss" bottom: "ic1" bottom: "final" bottom: "label" top: "loss"
                sdn_loss_param { epoch_iters: 10 } }
    """, phase=pb.TRAIN, seed=2)
    assert net.loss_weights == {"loss": 1.0}
    x, lab = rand(4, 3, seed=7), torch.tensor([0.0, 1, 2, 1], dtype=torch.float64)
    net.set_iteration(0)
    net(data=x, label=lab)
    ic1, final = net.blobs["ic1"].detach(), net.blobs["final"].detach()
    expected = 0.0115 * F.cross_entropy(ic1, lab.long()) + F.cross_entropy(final, lab.long())
    torch.testing.assert_close(net.loss, expected)
    net.loss.backward()
    assert net.layer("ic1").weight.grad.abs().sum() > 0 and net.layer("final").weight.grad.abs().sum() > 0


@pytest.mark.cuda
def test_mixed_pooling_and_sdn_loss_cuda_match_cpu(make_layer):
    for geometry in ("kernel_size: 8 stride: 8", "kernel_size: 3 stride: 2 pad: 1"):
        layer = make_layer(mixed(0.4, geometry), (2, 4, 17, 17), dtype=torch.float32)
        x = rand(2, 4, 17, 17, seed=8).float()
        dy_shape = layer.top_shapes([(2, 4, 17, 17)])[0]
        dy = rand(*dy_shape, seed=9).float()
        xc = x.clone().requires_grad_()
        (layer(xc) * dy).sum().backward()
        cpu = (layer(x).detach(), xc.grad, layer.alpha.grad.clone())
        layer.alpha.grad = None
        layer.to("cuda")
        xg = x.cuda().requires_grad_()
        yg = layer(xg)
        (yg * dy.cuda()).sum().backward()
        torch.testing.assert_close(yg.detach().cpu(), cpu[0])
        torch.testing.assert_close(xg.grad.cpu(), cpu[1])
        torch.testing.assert_close(layer.alpha.grad.cpu(), cpu[2], rtol=1e-5, atol=1e-5)
    loss = sdn_loss(make_layer, 3, "epoch_iters: 1")
    outs, lab = [rand(4, 5, seed=i).float() for i in range(3)], labels(4, 5).float()
    torch.testing.assert_close(loss(*[o.cuda() for o in outs], lab.cuda()).cpu(), loss(*outs, lab))
