"""Solver field `global_prune` (recipes-spec §4.4, §5.3, T3): MicroNet's global magnitude pruning with shadow
weights, its schedule, its layer selection and a bit-identical resume across a prune point."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.recipes.global_prune import GlobalPrune, prune_due
from netcompress.solvers import Solver
from netcompress.solvers.callbacks import TrainingCallback

ONES = "dns_convolution_param { weight_mask_filler { type: 'constant' value: 1 } bias_mask_filler { type: 'constant' value: 1 } }"

TINY = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "@SRC@" batch_size: 4 backend: LMDB } }
layer { name: "c1" type: "@C1@" bottom: "data" top: "c1"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } @ONES@ }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "@C2@" bottom: "c1" top: "c2"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } @ONES@ }
layer { name: "ip" type: "@IP@" bottom: "c2" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } }
        dns_inner_product_param { weight_mask_filler { type: 'constant' value: 1 } bias_mask_filler { type: 'constant' value: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture
def source(tmp_path, lmdb_writer, band_digits):
    imgs, labels = band_digits(24, 8)
    lmdb_writer(tmp_path / "train_lmdb", imgs, labels)
    return str(tmp_path / "train_lmdb")


def tiny_solver(source, prune: str, c1="MaskedConvolution", c2="MaskedConvolution", ip="MaskedInnerProduct",
                **kw) -> Solver:
    text = TINY.replace("@SRC@", source).replace("@C1@", c1).replace("@C2@", c2).replace("@IP@", ip)
    text = text.replace("@ONES@", ONES)
    sp = pb.SolverParameter(base_lr=0.05, lr_policy="fixed", momentum=0.9, weight_decay=1e-3, max_iter=1,
                            random_seed=5, solver_mode=pb.SolverParameter.CPU)
    text_format.Parse(text, sp.net_param)
    text_format.Parse(prune, sp.global_prune)
    for k, v in kw.items():
        setattr(sp, k, v)
    return Solver(sp, verbose=False)


def pruner(solver: Solver) -> GlobalPrune:
    return next(cb for cb in solver.callbacks if isinstance(cb, GlobalPrune))


def np_global_masks(weights, rate, strict=True):
    """§4.4 in NumPy: num_remain = N - ceil(N rate); t = the num_remain-th largest |w|; keep |w| > t."""
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights])
    num_remain = flat.size - math.ceil(flat.size * rate)
    t = np.sort(flat)[::-1][num_remain - 1]
    return [(np.abs(w) > t) if strict else (np.abs(w) >= t) for w in weights], num_remain


# ---- T3 on the Caffe-trained fixture LeNet ------------------------------------------------------------------

@pytest.mark.parametrize("strict, kept", [(True, 6374), (False, 6375)])
def test_t3_fixture_lenet_convs_at_rate_075(in_fixture_workdir, strict, kept):
    netp = ncio.read_net("lenet/lenet_train_test.prototxt")
    for lp in netp.layer:
        if lp.type == "Convolution":
            lp.type = "MaskedConvolution"
            text_format.Parse(ONES, lp)
    sp = pb.SolverParameter(base_lr=0.0, lr_policy="fixed", max_iter=1, random_seed=1,
                            solver_mode=pb.SolverParameter.CPU)
    sp.net_param.CopyFrom(netp)
    sp.global_prune.rate = 0.75
    sp.global_prune.strict_greater = strict
    s = Solver(sp, weights="lenet/lenet_iter_5000.caffemodel", verbose=False)
    convs = [s.net.layer("conv1"), s.net.layer("conv2")]
    assert pruner(s).layers == convs  # every masked convolution; the masked-free ip layers are not touched
    w = [c.weight.detach().numpy().copy() for c in convs]
    assert sum(a.size for a in w) == 25_500
    flat = np.abs(np.concatenate([a.reshape(-1) for a in w]))
    t = np.sort(flat)[::-1][6_375 - 1]
    assert int((flat == t).sum()) == 1  # no tie at the threshold in the trained weights
    s.solve()
    masks = [c.weight_mask.numpy() for c in convs]
    expected, num_remain = np_global_masks(w, 0.75, strict)
    assert num_remain == 6_375
    assert sum(int(m.sum()) for m in masks) == kept
    for m, e in zip(masks, expected):
        np.testing.assert_array_equal(m, e.astype(np.float32))
    assert all(float(c.bias_mask.min()) == 1.0 for c in convs)  # biases are never pruned


# ---- the schedule ------------------------------------------------------------------------------------------

def test_schedule_function():
    due = [it for it in range(12_000) if prune_due(it, 50, 5000)]
    assert due == [0] + list(range(49, 5000, 50))
    assert due[-1] == 4999 and len(due) == 101
    assert [it for it in range(300) if prune_due(it, 0, 5000)] == [0]
    assert [it for it in range(40) if prune_due(it, 10, 25)] == [0, 9, 19]


def test_masks_update_only_on_the_schedule_and_never_after_stop_iter(source):
    # The defaults (interval 50, stop_iter 5000) over 5,060 iterations of a tiny net: updates at 0, 49, ...,
    # 4999; the weights keep changing, but the masks after iteration 4999 are those it wrote.
    s = tiny_solver(source, "rate: 0.5", max_iter=5060, base_lr=0.02)
    cb = pruner(s)
    seen: list[int] = []
    final_masks: dict[int, list[np.ndarray]] = {}
    update = cb.update

    def spy(iteration, verbose=True):
        seen.append(iteration)
        update(iteration, verbose)
        final_masks[iteration] = [l.weight_mask.numpy().copy() for l in cb.layers]

    cb.update = spy
    w_4999 = {}

    class Watch(TrainingCallback):
        def before_forward(self, solver):
            if solver.iter == 5000:
                w_4999["w"] = [l.weight.detach().numpy().copy() for l in cb.layers]

    s.add_callback(Watch())
    s.solve()
    assert seen == [0] + list(range(49, 5000, 50))
    for l, m in zip(cb.layers, final_masks[4999]):
        np.testing.assert_array_equal(l.weight_mask.numpy(), m)
    w_end = [l.weight.detach().numpy() for l in cb.layers]
    assert any(not np.array_equal(a, b) for a, b in zip(w_4999["w"], w_end))  # training went on
    # each update kept num_remain - 1 of the 2 convolutions' 27 + 108 weights
    n = 27 + 108
    assert sum(int(m.sum()) for m in final_masks[4999]) == n - math.ceil(n * 0.5) - 1


def test_pruned_weights_return_from_the_raw_shadow_weights(source):
    s = tiny_solver(source, "rate: 0.75 interval: 2")
    cb = pruner(s)
    cb.update(0, verbose=False)
    c1 = s.net.layer("c1")
    pruned = np.argwhere(c1.weight_mask.numpy().reshape(-1) == 0)[0][0]
    with torch.no_grad():
        c1.weight.view(-1)[pruned] = 10.0  # the raw W grows back (its gradient is unmasked)
    cb.update(1, verbose=False)
    assert c1.weight_mask.view(-1)[pruned] == 1


def test_forward_uses_the_masked_weight_and_the_gradient_is_unmasked(source):
    s = tiny_solver(source, "rate: 0.75")
    pruner(s).update(0, verbose=False)
    c1 = s.net.layer("c1")
    m = c1.weight_mask
    assert 0 < float(m.sum()) < m.numel()
    s.net.zero_grad(set_to_none=True)
    s.net()
    torch.testing.assert_close(s.net.blobs["c1"].relu(), torch.nn.functional.conv2d(
        s.net.blobs["data"], c1.weight * m, c1.bias).relu())
    s.net.loss.backward()
    # entries that were pruned still receive a gradient (splicing): P.grad = W.grad
    assert float((c1.weight.grad * (1 - m)).abs().sum()) > 0


def test_named_layers_and_quant_layers(source):
    s = tiny_solver(source, "rate: 0.6 layer: 'c2' layer: 'ip'", c2="QuantConvolution", ip="MaskedInnerProduct")
    cb = pruner(s)
    assert [l.name for l in cb.layers] == ["c2", "ip"]
    w = [l.weight.detach().numpy().copy() for l in cb.layers]
    cb.update(0, verbose=False)
    expected, _ = np_global_masks(w, 0.6)
    for l, e in zip(cb.layers, expected):
        np.testing.assert_array_equal(l.weight_mask.numpy(), e.astype(np.float32))
    assert float(s.net.layer("c1").weight_mask.min()) == 1.0
    # a Quant layer's forward computes with the pruned weights: pruned entries quantize to 0
    q = s.net.layer("c2")
    assert torch.all(q.effective_weight()[q.weight_mask == 0] == 0)
    # no `layer`: every masked convolution, Quant included, and no inner product
    s = tiny_solver(source, "rate: 0.6", c2="QuantConvolution")
    assert [l.name for l in pruner(s).layers] == ["c1", "c2"]


def test_rate_is_the_decimal_written():
    # 0.7 as float32 is 0.699999988; the source's Python 0.7 prunes ceil(N 0.7)
    from netcompress.recipes.global_prune import global_threshold_masks, _decimal

    assert _decimal(np.float32(0.7)) == 0.7
    w = [torch.arange(1, 1001, dtype=torch.float32)]
    masks, t, num_remain = global_threshold_masks(w, 0.7)
    assert num_remain == 300 and t == 701.0 and int(masks[0].sum()) == 299


@pytest.mark.parametrize("prune, types, match", [
    ("rate: 1.0", {}, r"global_prune.rate must be in \[0, 1\)"),
    ("rate: 0.5 interval: -1", {}, "global_prune.interval must be >= 0"),
    ("rate: 0.5 layer: 'nope'", {}, "global_prune.layer 'nope' is not a layer of the train net 'tiny'"),
    ("rate: 0.5 layer: 'c1'", {"c1": "DNSConvolution"}, "'c1' is a DNSConvolution layer"),
    ("rate: 0.5 layer: 'c1' layer: 'c1'", {}, "named twice"),
    ("rate: 0.5", {"c1": "Convolution", "c2": "Convolution"}, "has none"),
])
def test_errors_name_the_field(source, prune, types, match):
    kw = {k: v for k, v in types.items()}
    if kw.get("c1") == "DNSConvolution":
        pytest.importorskip("netcompress.layers.dns")
    with pytest.raises(NetcompressError, match=match):
        tiny_solver(source, prune, **kw)


def test_resume_across_a_prune_point_is_bit_identical(source, tmp_path):
    # Prune points 0, 4, 9, 14 (interval 5, stop 15); snapshots at 7 and 14; the run resumed from iteration 7
    # crosses the prune points 9 and 14 and ends with the same bytes.
    def run(prefix, resume=None):
        s = tiny_solver(source, "rate: 0.6 interval: 5 stop_iter: 15", c2="QuantConvolution", max_iter=18,
                        snapshot=7, snapshot_prefix=str(tmp_path / prefix))
        s.solve(resume_file=resume)
        return s

    run("full")
    run("resumed", resume=str(tmp_path / "full_iter_7.solverstate"))
    assert (tmp_path / "full_iter_18.caffemodel").read_bytes() == (tmp_path / "resumed_iter_18.caffemodel").read_bytes()
    assert (tmp_path / "full_iter_14.caffemodel").read_bytes() == (tmp_path / "resumed_iter_14.caffemodel").read_bytes()
    m7 = {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in ncio.read_caffemodel(str(tmp_path / "full_iter_7.caffemodel")).layer}
    m18 = {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in ncio.read_caffemodel(str(tmp_path / "full_iter_18.caffemodel")).layer}
    assert not np.array_equal(m7["c1"][2], m18["c1"][2])  # the masks changed after the resume point
