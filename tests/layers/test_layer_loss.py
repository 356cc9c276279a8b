"""Loss layers and Accuracy against loops transcribing Caffe's Forward/Backward."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from netcompress import io as ncio
from netcompress.errors import NetDefinitionError

FLT_MIN = float(np.finfo(np.float32).tiny)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def labels(n, classes, seed=0, shape=None):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, classes, (n,), generator=g).to(torch.float64)
    return lab.reshape(shape) if shape else lab


def grad_of(layer, *inputs, wrt=0):
    xs = [t.clone().requires_grad_(i == wrt) for i, t in enumerate(inputs)]
    out = layer(*xs)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return xs[wrt].grad


# --- SoftmaxWithLoss ----------------------------------------------------------------------------------

def softmax_loss_reference(x, label, axis=1, ignore=None, mode="VALID"):
    x = x.numpy()
    C = x.shape[axis]
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    x3 = x.reshape(outer, C, inner)
    p = np.exp(x3 - x3.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    lab = label.numpy().reshape(outer, inner).astype(np.int64)
    loss, count = 0.0, 0
    grad = p.copy()
    for i in range(outer):
        for j in range(inner):
            if ignore is not None and lab[i, j] == ignore:
                grad[i, :, j] = 0
                continue
            loss -= math.log(max(p[i, lab[i, j], j], FLT_MIN))
            grad[i, lab[i, j], j] -= 1
            count += 1
    norm = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1, norm)
    return loss / norm, torch.from_numpy(grad.reshape(x.shape) / norm)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_with_loss_spatial_ignore_and_normalization(make_layer, mode):
    layer = make_layer(f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: 2 normalization: {mode} }}',
                       (2, 4, 3, 2), (2, 3, 2))
    x = rand(2, 4, 3, 2) * 3
    lab = labels(12, 4, shape=(2, 3, 2))
    lab[0, 0, 0] = 2.0
    ref, ref_grad = softmax_loss_reference(x, lab, ignore=2, mode=mode)
    torch.testing.assert_close(layer(x, lab), torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(grad_of(layer, x, lab), ref_grad)
    assert gradcheck(lambda v: layer(v, lab), (x.clone().requires_grad_(),))


class _HostReads(TorchDispatchMode):
    """Counts host reads of tensor values (what would synchronize a GPU, and break a CUDA graph's capture)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ignore", [None, 2])
def test_softmax_with_loss_device_label_check(make_layer, monkeypatch, ignore):
    """Off the CPU (here forced), SoftmaxWithLoss checks its labels without a host read: the same loss and
    gradient for good labels; a label out of range makes the loss NaN (the solver's finite check stops there)
    and the layer names the cause, where the CPU path raises at once."""
    from netcompress.layers import loss as loss_module
    extra = f"loss_param {{ ignore_label: {ignore} }}" if ignore is not None else ""
    layer = make_layer(f'type: "SoftmaxWithLoss" {extra}', (2, 4, 3, 2), (2, 3, 2))
    x = rand(2, 4, 3, 2) * 3
    lab = labels(12, 4, shape=(2, 3, 2))
    if ignore is not None:
        lab[0, 0, 0] = ignore
    want, want_grad = layer(x, lab), grad_of(layer, x, lab)
    monkeypatch.setattr(loss_module, "_host_check", lambda t: False)
    with _HostReads() as hr:
        got = layer(x, lab)
        got_grad = grad_of(layer, x, lab)
    assert hr.reads == 0
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    assert layer.non_finite_cause() is None
    bad = lab.clone()
    bad[1, 2, 1] = 4.0  # one class too far
    with _HostReads() as hr:
        out = layer(x, bad)
    assert hr.reads == 0 and torch.isnan(out)
    assert layer.non_finite_cause() == (
        "Layer 'layer' (type SoftmaxWithLoss) got a label outside [0, 4) (the predictions' classes)"
        f"{' and not ignore_label' if ignore is not None else ''}: the data's labels do not fit the net.")
    assert not torch.isnan(layer(x, lab)) and layer.non_finite_cause() is not None  # good again; the flag stays
    monkeypatch.setattr(loss_module, "_host_check", lambda t: True)
    with pytest.raises(NetDefinitionError, match=r"label 4 is out of range: labels must lie in \[0, 4\)"):
        layer(x, bad)


@pytest.mark.parametrize("snippet,x_shape,label_shape,extra", [
    ('type: "MultinomialLogisticLoss"', (3, 4, 1, 1), (3, 1, 1, 1), None),
    ('type: "InfogainLoss"', (5, 4), (5,), (4, 4)),
    ('type: "HingeLoss"', (5, 4), (5,), None),
    ('type: "KnowledgeDistillationLoss" kd_param { hard_weight: 0.5 soft_weight: 0.5 }', (5, 4), (5,), "teacher"),
], ids=["multinomial", "infogain", "hinge", "kd"])
def test_every_label_loss_checks_on_the_device(make_layer, monkeypatch, snippet, x_shape, label_shape, extra):
    """The other losses that index predictions by label use the same device check off the CPU: the same loss
    and gradient for good labels without a host read, NaN and the named cause for a label out of range."""
    from netcompress.layers import loss as loss_module
    shapes = [x_shape] + ([x_shape] if extra == "teacher" else []) + [label_shape] + \
        ([extra] if isinstance(extra, tuple) else [])
    layer = make_layer(snippet, *shapes)
    x = rand(*x_shape).abs() + 0.1 if "Multinomial" in snippet else rand(*x_shape)
    inputs = [x] + ([rand(*x_shape, seed=1)] if extra == "teacher" else []) + \
        [labels(math.prod(label_shape), 4, shape=label_shape)] + \
        ([rand(*extra, seed=2).abs()] if isinstance(extra, tuple) else [])
    li = 2 if extra == "teacher" else 1
    want, want_grad = layer(*inputs), grad_of(layer, *inputs)
    monkeypatch.setattr(loss_module, "_host_check", lambda t: False)
    with _HostReads() as hr:
        got = layer(*inputs)
        got_grad = grad_of(layer, *inputs)
    assert hr.reads == 0 and torch.equal(got, want) and torch.equal(got_grad, want_grad)
    bad = list(inputs)
    bad[li] = inputs[li].clone()
    bad[li].view(-1)[0] = 4.0
    with _HostReads() as hr:
        out = layer(*bad)
    assert hr.reads == 0 and torch.isnan(out)
    assert "got a label outside [0, 4)" in layer.non_finite_cause()


def test_softmax_with_loss_normalize_precedence(make_layer):
    x, lab = rand(4, 3), labels(4, 3)
    full = softmax_loss_reference(x, lab, mode="FULL")[0]
    batch = softmax_loss_reference(x, lab, mode="BATCH_SIZE")[0]
    # the deprecated `normalize` applies only when `normalization` is not given (Caffe's rule)
    l1 = make_layer('type: "SoftmaxWithLoss" loss_param { normalize: false }', (4, 3), (4,))
    torch.testing.assert_close(l1(x, lab), torch.tensor(batch, dtype=torch.float64))
    l2 = make_layer('type: "SoftmaxWithLoss" loss_param { normalize: false normalization: FULL }', (4, 3), (4,))
    torch.testing.assert_close(l2(x, lab), torch.tensor(full, dtype=torch.float64))


def test_softmax_with_loss_cap_and_prob_top(make_layer):
    layer = make_layer('type: "SoftmaxWithLoss" top: "loss" top: "prob"', (2, 3), (2,), dtype=torch.float32)
    x = torch.tensor([[0.0, 200.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float32, requires_grad=True)
    lab = torch.tensor([0.0, 2.0])
    loss, prob = layer(x, lab)
    p2 = torch.softmax(x.detach()[1], 0)
    expect = (-math.log(FLT_MIN) - math.log(float(p2[2]))) / 2  # sample 0 capped at -log(FLT_MIN)
    assert abs(float(loss.detach()) - expect) < 1e-4
    torch.testing.assert_close(prob, torch.softmax(x.detach(), 1))
    loss.backward()
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    torch.testing.assert_close(x.grad, (torch.softmax(x.detach(), 1) - onehot) / 2)  # p - onehot even when capped
    assert not prob.requires_grad
    assert layer.top_shapes([(2, 3), (2,)]) == [(), (2, 3)]


def test_softmax_with_loss_shape_errors(make_layer):
    with pytest.raises(NetDefinitionError, match=r"the label count \(3\) must equal the prediction count"):
        make_layer('type: "SoftmaxWithLoss"', (4, 3), (3,))
    with pytest.raises(NetDefinitionError, match="the data and label should have the same first dimension"):
        make_layer('type: "SoftmaxWithLoss"', (4, 3, 2), (2, 4))


# --- SigmoidCrossEntropyLoss -----------------------------------------------------------------------------

def sigmoid_ce_reference(x, t, ignore=None, mode="BATCH_SIZE"):
    xv, tv = x.numpy().ravel(), t.numpy().ravel()
    loss, count = 0.0, 0
    grad = np.zeros_like(xv)
    for i, (a, b) in enumerate(zip(xv, tv)):
        if ignore is not None and int(b) == ignore:
            continue
        ge = 1.0 if a >= 0 else 0.0
        loss -= a * (b - ge) - math.log(1 + math.exp(a - 2 * a * ge))
        grad[i] = 1 / (1 + math.exp(-a)) - b
        count += 1
    n = x.shape[0]
    norm = max(1, {"FULL": xv.size, "VALID": count, "BATCH_SIZE": n, "NONE": 1}[mode])
    return loss / norm, torch.from_numpy(grad.reshape(x.shape) / norm)


@pytest.mark.parametrize("fields,mode", [("", "BATCH_SIZE"), ("loss_param { normalization: VALID }", "VALID"),
                                         ("loss_param { normalize: true }", "VALID"),
                                         ("loss_param { normalization: FULL }", "FULL")])
def test_sigmoid_cross_entropy(make_layer, fields, mode):
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" {fields}', (3, 4), (3, 4))
    x = rand(3, 4) * 4
    x[0, 0], x[0, 1], x[0, 2] = 0.0, 300.0, -300.0  # stable at the extremes
    t = (rand(3, 4, seed=1) > 0).to(torch.float64)
    ref, ref_grad = sigmoid_ce_reference(x, t, mode=mode)
    torch.testing.assert_close(layer(x, t), torch.tensor(ref, dtype=torch.float64))
    g = grad_of(layer, x, t)
    torch.testing.assert_close(g, ref_grad)  # sigmoid(x) - t, also at x == 0
    assert torch.isfinite(g).all()
    assert gradcheck(lambda v: layer(v, t), ((x.clamp(-5, 5) + 0.01).requires_grad_(),))


def test_sigmoid_cross_entropy_ignore_label(make_layer):
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }',
                       (2, 5), (2, 5))
    x = rand(2, 5)
    t = torch.tensor([[1, 0, -1, 1, -1], [0, 0, 1, -1, 1]], dtype=torch.float64)
    ref, ref_grad = sigmoid_ce_reference(x, t, ignore=-1, mode="VALID")
    torch.testing.assert_close(layer(x, t), torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(grad_of(layer, x, t), ref_grad)
    with pytest.raises(NetDefinitionError, match="must have the same count"):
        make_layer('type: "SigmoidCrossEntropyLoss"', (2, 5), (2, 4))


# --- EuclideanLoss / MultinomialLogisticLoss ------------------------------------------------------------------

def test_euclidean_loss(make_layer):
    layer = make_layer('type: "EuclideanLoss"', (3, 2, 2), (3, 4))
    a, b = rand(3, 2, 2), rand(3, 4, seed=1)
    diff = a.reshape(3, 4) - b
    torch.testing.assert_close(layer(a, b), (diff ** 2).sum() / 3 / 2)
    torch.testing.assert_close(grad_of(layer, a, b, wrt=0), (diff / 3).reshape(3, 2, 2))
    torch.testing.assert_close(grad_of(layer, a, b, wrt=1), -diff / 3)  # both bottoms get a diff
    assert gradcheck(layer, (a.clone().requires_grad_(), b.clone().requires_grad_()))
    with pytest.raises(NetDefinitionError, match="same dimension per sample"):
        make_layer('type: "EuclideanLoss"', (3, 4), (3, 5))


def test_multinomial_logistic_loss(make_layer):
    layer = make_layer('type: "MultinomialLogisticLoss"', (3, 4, 1, 1), (3, 1, 1, 1))
    p = torch.softmax(rand(3, 4), 1).reshape(3, 4, 1, 1)
    p[2, 1, 0, 0] = 1e-30  # below kLOG_THRESHOLD
    lab = torch.tensor([0.0, 3.0, 1.0]).to(torch.float64).reshape(3, 1, 1, 1)
    probs = [float(p[0, 0]), float(p[1, 3]), 1e-20]
    torch.testing.assert_close(layer(p, lab), torch.tensor(-sum(math.log(v) for v in probs) / 3, dtype=torch.float64))
    g = grad_of(layer, p, lab)
    expect = torch.zeros(3, 4, 1, 1, dtype=torch.float64)
    for i, (c, v) in enumerate(zip([0, 3, 1], probs)):
        expect[i, c] = -1 / (3 * v)  # Caffe: scale / max(p, 1e-20), also where clamped
    torch.testing.assert_close(g, expect)


# --- InfogainLoss ---------------------------------------------------------------------------------------------

def infogain_reference(x, lab, H, ignore=None):
    x, H = x.numpy(), H.numpy()
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss, count = 0.0, 0
    grad = np.zeros_like(p)
    for i, l in enumerate(lab.numpy().astype(int)):
        if ignore is not None and l == ignore:
            continue
        for c in range(x.shape[1]):
            loss -= H[l, c] * math.log(max(p[i, c], 1e-20))
            grad[i, c] = p[i, c] * H[l].sum() - H[l, c]
        count += 1
    return loss / max(count, 1), torch.from_numpy(grad / max(count, 1))


def test_infogain_loss_third_bottom(make_layer):
    layer = make_layer('type: "InfogainLoss" loss_param { ignore_label: 1 }', (5, 3), (5,), (3, 3))
    x, lab = rand(5, 3) * 2, torch.tensor([0.0, 1.0, 2.0, 2.0, 0.0], dtype=torch.float64)
    H = rand(3, 3, seed=4).abs()
    ref, ref_grad = infogain_reference(x, lab, H, ignore=1)
    torch.testing.assert_close(layer(x, lab, H), torch.tensor(ref, dtype=torch.float64))
    torch.testing.assert_close(grad_of(layer, x, lab, H), ref_grad)
    assert gradcheck(lambda v: layer(v, lab, H), (x.clone().requires_grad_(),))


def test_infogain_loss_source_file(make_layer, tmp_path):
    H = torch.eye(3, dtype=torch.float64) * 2 + 0.5
    path = tmp_path / "H.binaryproto"
    ncio.write_binaryproto_array(str(path), H.numpy().astype(np.float32).reshape(1, 1, 3, 3))
    layer = make_layer(f'type: "InfogainLoss" top: "loss" top: "prob" infogain_loss_param {{ source: "{path}" }}',
                       (4, 3), (4,))
    assert not list(layer.buffers()) and not list(layer.parameters())  # H is no Caffe blob
    x, lab = rand(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    loss, prob = layer(x, lab)
    torch.testing.assert_close(loss, torch.tensor(infogain_reference(x, lab, H)[0], dtype=torch.float64))
    torch.testing.assert_close(prob, torch.softmax(x, 1))
    with pytest.raises(NetDefinitionError, match="source .* must be specified"):
        make_layer('type: "InfogainLoss"', (4, 3), (4,))
    with pytest.raises(NetDefinitionError, match="normalize is deprecated"):
        make_layer('type: "InfogainLoss" loss_param { normalize: true }', (4, 3), (4,), (3, 3))


# --- HingeLoss / ContrastiveLoss -------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(make_layer, norm):
    layer = make_layer(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', (4, 3), (4,))
    x, lab = rand(4, 3), torch.tensor([0.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    x[3, 1] = 1.0  # the margin exactly met for the label: no gradient there (sign(0) = 0)
    d = x.numpy().copy()
    for i, l in enumerate(lab.numpy().astype(int)):
        d[i, l] *= -1
    d = np.maximum(0, 1 + d)
    ref = d.sum() / 4 if norm == "L1" else (d * d).sum() / 4
    torch.testing.assert_close(layer(x, lab), torch.tensor(ref, dtype=torch.float64))
    g = d.copy() if norm == "L2" else np.sign(d)
    for i, l in enumerate(lab.numpy().astype(int)):
        g[i, l] *= -1
    g = g * (2 if norm == "L2" else 1) / 4
    torch.testing.assert_close(grad_of(layer, x, lab), torch.from_numpy(g))


def test_hinge_loss_refuses_a_label_of_several_values_per_sample(make_layer):
    # (it raised a reshape error in its forward; Caffe reads the first N values of such a blob)
    with pytest.raises(NetDefinitionError, match=r"the label must hold one value per sample \(N, 1, 1, 1\), got "
                                                 r"shape \[4, 3, 2, 2\]"):
        make_layer('type: "HingeLoss"', (4, 3), (4, 3, 2, 2))
    make_layer('type: "HingeLoss"', (4, 3), (4, 1, 1, 1))  # Caffe's (N, 1, 1, 1) labels


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss(make_layer, legacy):
    margin = 2.0
    layer = make_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
                       f'legacy_version: {str(legacy).lower()} }}', (4, 3, 1, 1), (4, 3, 1, 1), (4, 1, 1, 1))
    a, b = rand(4, 3, 1, 1) * 0.7, rand(4, 3, 1, 1, seed=1) * 0.7
    b[3] = a[3] + 3.0  # a dissimilar pair beyond the margin
    y = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).reshape(4, 1, 1, 1)
    diff = (a - b).reshape(4, 3).numpy()
    d2 = (diff ** 2).sum(1)
    loss, ga = 0.0, np.zeros_like(diff)
    for j in range(4):
        if y[j] != 0:
            loss += d2[j]
            ga[j] = diff[j] / 4
        elif legacy:
            loss += max(margin - d2[j], 0.0)
            ga[j] = -diff[j] / 4 if margin - d2[j] > 0 else 0.0
        else:
            dist = math.sqrt(d2[j])
            loss += max(margin - dist, 0.0) ** 2
            mdist = margin - dist
            ga[j] = -(mdist / (dist + 1e-4)) * diff[j] / 4 if mdist > 0 else 0.0
    torch.testing.assert_close(layer(a, b, y), torch.tensor(loss / 4 / 2, dtype=torch.float64))
    torch.testing.assert_close(grad_of(layer, a, b, y, wrt=0), torch.from_numpy(ga).reshape(4, 3, 1, 1))
    torch.testing.assert_close(grad_of(layer, a, b, y, wrt=1), -torch.from_numpy(ga).reshape(4, 3, 1, 1))


# --- Accuracy -------------------------------------------------------------------------------------------------

def accuracy_reference(x, lab, k, ignore=None):
    """Caffe's AccuracyLayer::Forward_cpu with std::partial_sort on (score, class) pairs."""
    x, lab = x.numpy(), lab.numpy().astype(int)
    C = x.shape[1]
    right, count = 0, 0
    per_right, per_total = np.zeros(C), np.zeros(C)
    for i, l in enumerate(lab):
        if ignore is not None and l == ignore:
            continue
        per_total[l] += 1
        ranked = sorted(((x[i, c], c) for c in range(C)), reverse=True)[:k]
        if any(c == l for _, c in ranked):
            right += 1
            per_right[l] += 1
        count += 1
    per = np.where(per_total > 0, per_right / np.maximum(per_total, 1), 0)
    return right / count, per


@pytest.mark.parametrize("k", [1, 2])
def test_accuracy_ties_follow_caffe(make_layer, k):
    layer = make_layer(f'type: "Accuracy" top: "acc" top: "per" accuracy_param {{ top_k: {k} ignore_label: 3 }}',
                       (8, 4), (8,))
    x = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [0, 2, 2, 0], [0, 2, 2, 0],
                      [5, 1, 5, 1], [3, 2, 1, 0], [0, 0, 0, 9], [1, 2, 3, 4]], dtype=torch.float64)
    lab = torch.tensor([3, 0, 1, 2, 0, 1, 3, 2], dtype=torch.float64)
    acc, per = layer(x, lab)
    ref_acc, ref_per = accuracy_reference(x, lab, k, ignore=3)
    assert abs(float(acc) - ref_acc) < 1e-12
    torch.testing.assert_close(per, torch.from_numpy(ref_per))


def test_accuracy_random_and_spatial(make_layer):
    layer = make_layer('type: "Accuracy" accuracy_param { top_k: 2 }', (6, 5), (6,))
    x = torch.round(rand(6, 5) * 2)
    lab = labels(6, 5)
    assert abs(float(layer(x, lab)) - accuracy_reference(x, lab, 2)[0]) < 1e-12
    spatial = make_layer('type: "Accuracy"', (2, 3, 2, 2), (2, 2, 2))
    xs, ls = rand(2, 3, 2, 2), labels(8, 3, shape=(2, 2, 2))
    flat = xs.permute(0, 2, 3, 1).reshape(-1, 3)
    assert abs(float(spatial(xs, ls)) - accuracy_reference(flat, ls.reshape(-1), 1)[0]) < 1e-12
    with pytest.raises(NetDefinitionError, match=r"top_k \(6\) must be at most the number of classes \(5\)"):
        make_layer('type: "Accuracy" accuracy_param { top_k: 6 }', (6, 5), (6,))


@pytest.mark.parametrize("snippet,shapes", [
    ('type: "MultinomialLogisticLoss"', [(0, 3), (0,)]),
    ('type: "HingeLoss"', [(0, 3), (0,)]),
    ('type: "ContrastiveLoss"', [(0, 3), (0, 3), (0,)]),
    ('type: "EuclideanLoss"', [(0, 3), (0, 3)]),
    ('type: "ArgMax"', [(0, 3)]),
    ('type: "MVN"', [(0, 3, 2, 2)]),
])
def test_an_empty_batch_runs(make_layer, snippet, shapes):
    """A batch of no samples (a Python data layer may give one): the per-sample losses are Caffe's 0/0, NaN (the
    solver's finite check names it), the others empty; it was torch's refusal of reshape(0, -1) as an unexpected
    error (found by a Python-layer fuzz)."""
    layer = make_layer(snippet, *shapes)
    xs = [torch.rand(s, dtype=torch.float64, requires_grad=i == 0) for i, s in enumerate(shapes)]
    out = layer(*xs)
    if "Loss" in snippet:
        assert out.shape == () and torch.isnan(out)
        out.backward()
        assert xs[0].grad.shape == shapes[0]
    else:
        assert out.numel() == 0 and out.shape[0] == 0


def test_a_nan_label_is_named_as_such(make_layer):
    layer = make_layer('type: "MultinomialLogisticLoss"', (2, 3), (2,))
    with pytest.raises(NetDefinitionError, match=r"label -9223372036854775808 \(a NaN or infinite label, or one "
                                                 r"past 64 bits, cast to an integer\) is out of range"):
        layer(torch.rand(2, 3, dtype=torch.float64), torch.tensor([0.0, float("nan")], dtype=torch.float64))
