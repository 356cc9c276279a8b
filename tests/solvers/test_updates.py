"""Every solver type's update over several iterations against a NumPy transcription of Caffe's
formulas, run through the real Solver on a net whose gradients have a closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

# x = 0, so z = b for both samples; labels 0: loss = -log softmax(b)[0],
# dL/db = softmax(b) - e0 (VALID normalization over 2 samples), dL/dW = 0.
NET = """
name: "closed"
layer { name: "x" type: "Input" top: "x" top: "y"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "z" bottom: "y" top: "loss" }
"""


def make_solver(**kw) -> Solver:
    s = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=6, random_seed=7,
                           weight_decay=0.01, momentum=0.9, solver_mode=pb.SolverParameter.CPU)
    text_format.Parse(NET, s.net_param)
    for k, v in kw.items():
        setattr(s, k, v)
    return Solver(s, verbose=False)


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def reference(kind, W, b, iters, sp, lars=False):
    """NumPy float64 transcription of Caffe's rules for the two blobs (W: lr 1 dm 1; b: lr 2 dm 0)."""
    blobs = [(W.astype(np.float64), 1.0, 1.0), (b.astype(np.float64), 2.0, 0.0)]
    vals = [x for x, _, _ in blobs]
    hist = [[np.zeros_like(v), np.zeros_like(v)] for v in vals]
    m, wd, d = sp.momentum, sp.weight_decay, sp.delta
    for it in range(iters):
        grads = [np.zeros_like(vals[0]), softmax(vals[1]) - np.eye(4)[0]]
        for i, (_, lr_mult, decay_mult) in enumerate(blobs):
            g = grads[i] + wd * decay_mult * vals[i]
            rate = sp.base_lr * lr_mult
            if lars:
                wn, gn = np.linalg.norm(vals[i]), np.linalg.norm(g)
                rate = sp.base_lr * (sp.local_gw_ratio * wn / (gn + wd * wn) if wn > 0 and gn > 0 else 1.0)
            h, h2 = hist[i]
            if kind in ("SGD", "LarsSGD"):
                h[:] = m * h + rate * g
                u = h.copy()
            elif kind == "Nesterov":
                old = h.copy()
                h[:] = m * h + rate * g
                u = (1 + m) * h - m * old
            elif kind == "AdaGrad":
                h[:] = h + g * g
                u = rate * g / (np.sqrt(h) + d)
            elif kind == "RMSProp":
                h[:] = sp.rms_decay * h + (1 - sp.rms_decay) * g * g
                u = rate * g / (np.sqrt(h) + d)
            elif kind == "AdaDelta":
                h[:] = m * h + (1 - m) * g * g
                gg = g * np.sqrt((h2 + d) / (h + d))
                h2[:] = m * h2 + (1 - m) * gg * gg
                u = rate * gg
            elif kind == "Adam":
                b1, b2, t = m, sp.momentum2, it + 1
                h[:] = b1 * h + (1 - b1) * g
                h2[:] = b2 * h2 + (1 - b2) * g * g
                u = rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h / (np.sqrt(h2) + d)
            vals[i] = vals[i] - u
    return vals, hist


@pytest.mark.parametrize("kind,extra", [
    ("SGD", {}), ("Nesterov", {}), ("AdaGrad", {"momentum": 0.0}), ("RMSProp", {"momentum": 0.0}),
    ("AdaDelta", {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6}), ("Adam", {"base_lr": 0.01}),
    ("LarsSGD", {"local_gw_ratio": 0.02}),
])
def test_update_rules_against_closed_form(kind, extra):
    s = make_solver(type=kind, **extra)
    W0 = s.net.layer("ip").weight.detach().numpy().copy()
    b0 = s.net.layer("ip").bias.detach().numpy().copy()
    s.solve()
    (W, b), hist = reference(kind, W0, b0, 6, s.param, lars=kind == "LarsSGD")
    np.testing.assert_allclose(s.net.layer("ip").weight.detach().numpy(), W, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(s.net.layer("ip").bias.detach().numpy(), b, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(s.history[1][0].numpy(), hist[1][0], rtol=2e-5, atol=1e-7)


def test_lars_trust_ratio_formula_and_ignored_lr_mult():
    # W: g = wd*W after regularization, so local_lr = eta*|W| / (wd|W| + wd|W|) = eta / (2 wd).
    s = make_solver(type="LarsSGD", local_gw_ratio=0.004, momentum=0.0, max_iter=1)
    W0 = s.net.layer("ip").weight.detach().clone()
    s.solve()
    expected = W0 - 0.1 * (0.004 / (2 * 0.01)) * 0.01 * W0
    torch.testing.assert_close(s.net.layer("ip").weight.detach(), expected, rtol=1e-6, atol=1e-8)


def test_lars_ratio_bound_is_checked():
    with pytest.raises(NetcompressError, match="local_gw_ratio"):
        make_solver(type="LarsSGD", local_gw_ratio=1.5)


def test_l1_regularization_and_clip_gradients():
    s = make_solver(type="SGD", regularization_type="L1", momentum=0.0, max_iter=1)
    W0 = s.net.layer("ip").weight.detach().clone()
    s.solve()
    torch.testing.assert_close(s.net.layer("ip").weight.detach(), W0 - 0.1 * 0.01 * torch.sign(W0))
    s = make_solver(type="SGD", momentum=0.0, weight_decay=0.0, clip_gradients=0.01, max_iter=1)
    b0 = s.net.layer("ip").bias.detach().numpy().copy()
    g = softmax(b0.astype(np.float64)) - np.eye(4)[0]
    g = g * 0.01 / np.linalg.norm(g)
    s.solve()
    np.testing.assert_allclose(s.net.layer("ip").bias.detach().numpy(), b0 - 0.2 * g, rtol=1e-5)


def test_iter_size_normalizes_accumulated_gradient():
    a = make_solver(type="SGD", max_iter=3)
    b = make_solver(type="SGD", max_iter=3, iter_size=3)
    a.solve()
    b.solve()
    torch.testing.assert_close(a.net.layer("ip").bias, b.net.layer("ip").bias, rtol=1e-6, atol=1e-7)


def test_solverstate_history_layout_and_unknown_type(tmp_path):
    with pytest.raises(NetcompressError, match="Unknown solver type: \"Foo\""):
        make_solver(type="Foo")
    s = make_solver(type="Adam", snapshot_prefix=str(tmp_path / "m"))
    s.solve()
    from netcompress import io as ncio
    st = ncio.read_binary_proto(str(tmp_path / "m_iter_6.solverstate"), pb.SolverState())
    assert st.iter == 6 and len(st.history) == 4  # Adam: m for W, b, then v for W, b
    assert list(st.history[0].shape.dim) == [4, 3] and list(st.history[1].shape.dim) == [4]
    np.testing.assert_allclose(ncio.blob_to_array(st.history[3]), s.history[1][1].numpy())
    assert st.learned_net == str(tmp_path / "m_iter_6.caffemodel")


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_form_lr_outside_is_pytorch_sgd(nesterov):
    # h <- m*h + g; w -= lr*h (PyTorch SGD; Nesterov: w -= lr*(g + m*h)), with a changing lr so that the
    # two forms differ; weight decay added to the gradient first, as both do.
    kind = "Nesterov" if nesterov else "SGD"
    s = make_solver(type=kind, momentum_form=pb.SolverParameter.LR_OUTSIDE, lr_policy="step", gamma=0.5,
                    stepsize=2, max_iter=6)
    ip = s.net.layer("ip")
    ref = torch.nn.Parameter(ip.weight.detach().clone()), torch.nn.Parameter(ip.bias.detach().clone())
    opt = torch.optim.SGD([{"params": [ref[0]], "weight_decay": 0.01, "lr": 0.1},
                           {"params": [ref[1]], "weight_decay": 0.0, "lr": 0.2}],
                          lr=0.1, momentum=float(np.float32(0.9)), nesterov=nesterov)
    for it in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(torch.zeros(2, 3) @ ref[0].t() + ref[1], torch.zeros(2, dtype=torch.long))
        loss.backward()
        for group, mult in zip(opt.param_groups, (1.0, 2.0)):
            group["lr"] = float(np.float32(0.1) * np.float32(0.5 ** (it // 2))) * mult
        opt.step()
    s.solve()
    torch.testing.assert_close(ip.weight.detach(), ref[0].detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ip.bias.detach(), ref[1].detach(), rtol=1e-6, atol=1e-8)
    caffe = make_solver(type=kind, lr_policy="step", gamma=0.5, stepsize=2, max_iter=6)
    caffe.solve()
    assert not torch.allclose(caffe.net.layer("ip").bias, ip.bias, rtol=1e-4)  # the forms differ here


@pytest.mark.parametrize("kind,extra", [("AdaGrad", {"momentum": 0.0}), ("Adam", {"base_lr": 0.01})])
def test_momentum_form_changes_nothing_where_the_rate_is_outside_already(kind, extra):
    a = make_solver(type=kind, **extra)
    b = make_solver(type=kind, momentum_form=pb.SolverParameter.LR_OUTSIDE, **extra)
    a.solve()
    b.solve()
    assert torch.equal(a.net.layer("ip").bias, b.net.layer("ip").bias)


def test_epoch_iters_from_the_field_or_an_error_naming_the_need():
    s = make_solver(epoch_iters=4)
    assert s.epoch_iters == 4 and s.epoch == 1
    s = make_solver()  # an Input net: nothing to derive the epoch from
    assert s.epoch_iters == 0 and s.epoch == 0
    with pytest.raises(NetcompressError, match=r"<SolverParameter>: layer 'x' needs the epoch length, but "
                                               r"epoch_iters is 0 and the train net has no data layer"):
        s.require_epoch_iters("layer 'x'")
    with pytest.raises(NetcompressError, match="epoch_iters must be >= 0"):
        make_solver(epoch_iters=-1)


def test_epoch_ends_are_logged_and_reach_the_layers(caplog):
    import logging

    seen = []
    s = make_solver(epoch_iters=2)
    s.net.layer("ip").epoch_end = seen.append
    with caplog.at_level(logging.INFO, logger="netcompress"):
        s.solve()
    assert seen == [1, 2, 3]
    assert "Epoch 2 done (iteration 4, 2 iterations per epoch)" in caplog.text
