"""Solver fields `growth`, `snip_schedule` and `freeze_zero_params` (recipes-spec 2.3, 5.3.2, Q3-Q5, T7)
on small Shallow-Deep nets written by make_sdn_net, trained on random LMDB images."""
from __future__ import annotations

import re

import pytest
import torch

from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.recipes.growth import growth_stage_at, layer_stage
from netcompress.recipes.snip import SNIP_GENERATOR, iterative_keep, prunable_layers
from netcompress.solvers import Solver
from netcompress.solvers.callbacks import TrainingCallback
from netcompress.tools import sdn

MASKS = ('weight_mask_filler { type: "constant" value: 1 } bias_mask_filler { type: "constant" value: 1 }')
# TanH cells: with ReLUs a tiny net has dead units whose weights all score 0 (ties at 0).
TEMPLATE = f"""name: "tiny_sdn"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "@TRAIN@" batch_size: 8 backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "@TEST@" batch_size: 8 backend: LMDB }} }}
layer {{ name: "conv0" type: "MaskedConvolution" bottom: "data" top: "conv0"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }}
        dns_convolution_param {{ {MASKS} }} }}
layer {{ name: "bn0" type: "BatchNorm" bottom: "conv0" top: "conv0" }}
layer {{ name: "scale0" type: "Scale" bottom: "conv0" top: "conv0" scale_param {{ bias_term: true }} }}
layer {{ name: "act0" type: "TanH" bottom: "conv0" top: "conv0" }}
# @cell
layer {{ name: "cell${{k}}_conv" type: "MaskedConvolution" bottom: "${{bottom}}" top: "cell${{k}}_conv"
        convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 weight_filler {{ type: "xavier" }} }}
        dns_convolution_param {{ {MASKS} }} }}
layer {{ name: "cell${{k}}_sum" type: "Eltwise" bottom: "cell${{k}}_conv" bottom: "${{bottom}}" top: "${{tap}}" }}
layer {{ name: "cell${{k}}_act" type: "TanH" bottom: "${{tap}}" top: "${{top}}" }}
# @end
layer {{ name: "end_pool" type: "Pooling" bottom: "${{bottom}}" top: "end_pool"
        pooling_param {{ pool: AVE kernel_size: 4 stride: 4 }} }}
layer {{ name: "fc" type: "MaskedInnerProduct" bottom: "end_pool" top: "fc"
        inner_product_param {{ num_output: 4 weight_filler {{ type: "xavier" }} }}
        dns_inner_product_param {{ {MASKS} }} }}
"""
ICS_4_STAGES = "0,0,1,0,0,1,0,1,0"  # the INRIA default: 3, 3, 2, 1 cells per stage


@pytest.fixture(scope="module")
def data(tmp_path_factory, band_digits):
    from netcompress.data.mnist5k import write_digits_lmdb

    root = tmp_path_factory.mktemp("sdn_data")
    imgs, labels = band_digits(72, 8)
    write_digits_lmdb(str(root / "train"), imgs[:64], labels[:64])
    write_digits_lmdb(str(root / "test"), imgs[64:], labels[64:])
    return root


def make_net(data, tmp_path, ics: str = ICS_4_STAGES) -> str:
    tpl = tmp_path / "cells.prototxt-template"
    tpl.write_text(TEMPLATE.replace("@TRAIN@", str(data / "train")).replace("@TEST@", str(data / "test")))
    out = str(tmp_path / "net.prototxt")
    assert sdn.make_sdn_net_main([str(tpl), "--ics", ics, "--growth", "--feature-size", "8",
                                  "--policy", "INRIA", "--ramp-epochs", "20", "--out", out]) == 0
    return out


def solver_param(net: str, tmp_path, max_iter: int, growth=(25, 50, 75), snip: dict | None = None,
                 **kw) -> pb.SolverParameter:
    sp = pb.SolverParameter(net=net, base_lr=0.05, lr_policy="fixed", momentum=0.9, weight_decay=5e-4,
                            max_iter=max_iter, display=0, test_interval=1000, test_iter=[1], random_seed=3,
                            epoch_iters=1, snapshot_prefix=str(tmp_path / "run"))
    if growth:
        sp.growth.epoch.extend(growth)
    if snip is not None:
        s = sp.snip_schedule
        s.epoch.extend(snip["epoch"])
        s.policy = pb.SnipScheduleParameter.Policy.Value(snip.get("policy", "ITERATIVE"))
        s.keep_ratio.extend(snip["keep"])
        s.min_ratio.extend(snip.get("min", []))
        s.batch_size = snip.get("batch_size", 16)
        if "reinit" in snip:
            s.reinit = pb.SnipScheduleParameter.Reinit.Value(snip["reinit"])
    for k, v in kw.items():
        setattr(sp, k, v)
    return sp


def block_counts(net) -> dict[int, tuple[int, int]]:
    """block -> (weights kept, weights) over the net's masked layers."""
    out: dict[int, list[int]] = {}
    for _, layer in prunable_layers(net):
        c = out.setdefault(layer_stage(layer.layer_param), [0, 0])
        c[0] += int((layer.weight_mask == 1).sum())
        c[1] += layer.weight_mask.numel()
    return {b: (k, n) for b, (k, n) in sorted(out.items())}


class Record(TrainingCallback):
    """Added after the recipes: sees each iteration's net, and each epoch start after growth and pruning."""

    def __init__(self):
        self.cells: dict[int, list[int]] = {}
        self.has_final: dict[int, bool] = {}
        self.blocks: dict[int, dict[int, tuple[int, int]]] = {}
        self.masks: dict[int, dict[str, torch.Tensor]] = {}

    def before_iteration(self, solver) -> None:
        names = solver.net.layer_names
        self.cells[solver.iter] = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(r"cell(\d+)_conv", n)))
        self.has_final[solver.iter] = solver.net.has_layer("fc")

    def on_epoch_end(self, solver, epoch: int) -> None:
        self.blocks[epoch + 1] = block_counts(solver.net)
        self.masks[epoch + 1] = {n: l.weight_mask.clone() for n, l in prunable_layers(solver.net)}


def test_growth_schedule_grows_3_3_2_1_cells_at_epochs_25_50_75(data, tmp_path):
    net = make_net(data, tmp_path)
    rec = Record()
    s = Solver(solver_param(net, tmp_path, 80), verbose=False)
    s.add_callback(rec)
    s.solve()
    # epoch e covers iterations [(e-1) I, e I), I = 1: stage k from iteration (epoch_k - 1)
    assert [growth_stage_at([25, 50, 75], 1, it) for it in (0, 23, 24, 48, 49, 73, 74)] == [0, 0, 1, 1, 2, 2, 3]
    counts = {it: len(c) for it, c in rec.cells.items()}
    assert {counts[i] for i in range(0, 24)} == {3} and {counts[i] for i in range(24, 49)} == {6}
    assert {counts[i] for i in range(49, 74)} == {8} and {counts[i] for i in range(74, 80)} == {9}
    assert rec.cells[79] == list(range(1, 10))
    # the final classifier is active only from epoch 75 (iteration 74)
    assert [i for i, f in rec.has_final.items() if f] == list(range(74, 80))
    # one SDNLoss per stage, over the outputs grown so far; the test net grows alike
    losses = [n for n in s.net.layer_names if s.net.layer(n).type_name == "SDNLoss"]
    assert losses == ["sdn_loss_grow3"] and s.net.layer("sdn_loss_grow3").n_outputs == 4
    assert [n for n in s.test_nets[0].layer_names if n.startswith("accuracy")] == \
        ["accuracy_ic1", "accuracy_ic2", "accuracy_ic3", "accuracy_final"]
    assert s.test_nets[0].layer("cell9_conv").weight is s.net.layer("cell9_conv").weight
    # INRIA's coefficients are recomputed from the current number of outputs (n = 4 at stage 3)
    assert s.net.layer("sdn_loss_grow3").max_coeff == pytest.approx([0.26, 0.51, 0.76])


def test_iterative_keep_sequence():
    prunes = [10, 35, 60, 85, 110, 135, 160]
    seq = [iterative_keep(0.8, 0.5, 1, prunes, e) for e in prunes]
    assert seq == pytest.approx([0.8, 0.64, 0.512, 0.5, 0.5, 0.5, 0.5])
    assert [iterative_keep(0.8, 0.5, 75, prunes, e) for e in prunes] == \
        [None, None, None, pytest.approx(0.8), pytest.approx(0.64), pytest.approx(0.512), 0.5]


def test_snip_schedule_iterative_keeps_int_n_keep_per_block(data, tmp_path):
    net = make_net(data, tmp_path)
    prunes = [10, 35, 60, 85, 110, 135, 160]
    s = Solver(solver_param(net, tmp_path, 161, snip={"epoch": prunes, "keep": [0.8] * 4, "min": [0.5] * 4}),
               verbose=False)
    rec = Record()
    s.add_callback(rec)
    s.solve()
    (cb,) = [c for c in s.callbacks if type(c).__name__ == "SnipSchedule"]
    grown = [1, 25, 50, 75]
    for e in prunes:
        for b, (kept, n) in rec.blocks[e].items():
            keep = iterative_keep(0.8, 0.5, grown[b], prunes, e)
            assert keep is not None and kept == int(n * keep), (e, b)
    block0 = [ev["keep"] for ev in cb.events if ev["block"] == 0]
    assert block0 == pytest.approx([0.8, 0.64, 0.512, 0.5, 0.5, 0.5, 0.5])
    first3 = next(ev for ev in cb.events if ev["block"] == 3)
    assert first3["epoch"] == 85 and first3["keep"] == pytest.approx(0.8)
    assert all(ev["kept"] == ev["k"] == int(ev["weights"] * ev["keep"]) for ev in cb.events)
    # masks only shrink, and pruned raw weights are 0 when pruned
    for a, b in zip(prunes, prunes[1:]):
        for n, m in rec.masks[a].items():
            assert torch.all(rec.masks[b][n] <= m)
    # the ICs and the final classifier are pruned too (MaskedInnerProduct, copied from the end's fc)
    assert {"ic1", "ic2", "ic3", "fc"} <= {n for n, _ in prunable_layers(s.net)}


def test_snip_schedule_skip_layer_prunes_block_j_at_the_jth_epoch_only(data, tmp_path):
    net = make_net(data, tmp_path)
    keep = [0.9, 0.8, 0.7, 0.6]
    s = Solver(solver_param(net, tmp_path, 86, snip={"epoch": [10, 35, 60, 85], "policy": "SKIP_LAYER", "keep": keep}),
               verbose=False)
    rec = Record()
    s.add_callback(rec)
    s.solve()
    before = {}
    for j, e in enumerate([10, 35, 60, 85]):
        for b, (kept, n) in rec.blocks[e].items():
            if b == j:
                assert kept == int(n * keep[j]), (e, b)
            elif b < j:
                assert (kept, n) == before[b]  # pruned once, at its own epoch
            else:
                assert kept == n
        before = rec.blocks[e]


def test_snip_schedule_normal_is_one_global_top_k_scored_on_xavier_draws(data, tmp_path):
    net = make_net(data, tmp_path, ics="0,1,1")
    sp = solver_param(net, tmp_path, 6, growth=(3, 5), snip={"epoch": [4], "policy": "NORMAL", "keep": [0.3]})
    s = Solver(sp, verbose=False)
    gen0 = s.net.ctx.named_generator(SNIP_GENERATOR).get_state().clone()
    rec = Record()
    s.add_callback(rec)
    s.solve()
    kept, total = map(sum, zip(*rec.blocks[4].values()))
    assert kept == int(total * 0.3)
    fractions = {b: k / n for b, (k, n) in rec.blocks[4].items()}
    assert len(set(fractions.values())) > 1  # global, not per block
    # reinit (NORMAL's default) draws the Xavier weights it scores from the "snip" generator
    assert not torch.equal(s.net.ctx.named_generator(SNIP_GENERATOR).get_state(), gen0)
    # without reinit the trained weights themselves are scored: other masks
    sp2 = solver_param(net, tmp_path, 6, growth=(3, 5),
                       snip={"epoch": [4], "policy": "NORMAL", "keep": [0.3], "reinit": "NONE"})
    s2 = Solver(sp2, verbose=False)
    rec2 = Record()
    s2.add_callback(rec2)
    s2.solve()
    assert any(not torch.equal(rec2.masks[4][n], rec.masks[4][n]) for n in rec.masks[4])


def test_pruned_raw_weights_are_zeroed_and_kept_ones_untouched(data, tmp_path):
    net = make_net(data, tmp_path, ics="0,1,1")
    sp = solver_param(net, tmp_path, 3, growth=(3,), snip={"epoch": [2], "policy": "NORMAL", "keep": [0.4]})
    s = Solver(sp, verbose=False)
    seen = {}

    class Around(TrainingCallback):
        def __init__(self, key):
            self.key = key

        def on_epoch_end(self, solver, epoch):
            if epoch == 1:
                seen[self.key] = {n: l.weight.detach().clone() for n, l in prunable_layers(solver.net)}
    s.callbacks.insert(1, Around("before"))
    s.add_callback(Around("after"))
    s.solve()
    for n, w in seen["before"].items():
        m = s.net.layer(n).weight_mask
        after = seen["after"][n]
        assert torch.equal(after[m == 1], w[m == 1]) and float(after[m == 0].abs().sum()) == 0


def test_freeze_zero_params_freezes_exact_zeros_only(data, tmp_path):
    net = make_net(data, tmp_path, ics="0,1,1")
    runs = {}
    for freeze in (False, True):
        s = Solver(solver_param(net, tmp_path, 1, growth=(3,), freeze_zero_params=freeze), verbose=False)
        with torch.no_grad():
            s.net.layer("conv0").weight[0, 0, 0, :2] = 0.0
            s.net.layer("conv0").weight[0, 0, 1, 0] = -0.0
        start = {e.key: e.tensor.detach().clone() for e in s.params if e.learnable}
        s.solve()
        runs[freeze] = (start, {e.key: e.tensor.detach().clone() for e in s.params if e.learnable},
                        {e.key: h[0].clone() for e, h in zip(s.params, s.history)})
    start, free, hist_free = runs[False]
    _, frozen, hist_frozen = runs[True]
    for key, w0 in start.items():
        zero = w0 == 0
        assert torch.equal(frozen[key][~zero], free[key][~zero]), key  # other entries: the same update
        assert torch.equal(frozen[key][zero], w0[zero]) and \
            torch.equal(torch.signbit(frozen[key][zero]), torch.signbit(w0[zero]))
        assert torch.equal(hist_frozen[key], hist_free[key])  # the history is updated as usual
    assert float((free["conv0[0]"][0, 0, 0, :2]).abs().sum()) > 0  # unfrozen zeros move
    # every Scale bias (constant-0 filler) stays 0 for the run: the faithful quirk (Q4)
    assert float(frozen["scale0[1]"].abs().sum()) == 0 and float(free["scale0[1]"].abs().sum()) > 0


def test_grown_lr_constant_base_lr_keeps_grown_layers_at_base_lr(data, tmp_path):
    net = make_net(data, tmp_path, ics="0,1,1")
    seen = {}

    class Capture(TrainingCallback):
        def before_update(self, solver):
            if solver.iter == 4:
                seen["w"] = {e.key: e.tensor.detach().clone() for e in solver.params if e.learnable}
                seen["g"] = {e.key: e.tensor.grad.detach().clone() for e in solver.params if e.learnable}
                seen["rate"] = solver.rate

        def after_iteration(self, solver):
            if solver.iter == 5:
                seen["w1"] = {e.key: e.tensor.detach().clone() for e in solver.params if e.learnable}
                seen["mult"] = {e.key: e.lr_mult for e in solver.params if e.learnable}
    for grown_lr in ("FOLLOW_SCHEDULE", "CONSTANT_BASE_LR"):
        sp = solver_param(net, tmp_path, 5, growth=(3,), momentum=0.0, weight_decay=0.0, lr_policy="step",
                          stepsize=2, gamma=0.1)
        sp.growth.grown_lr = pb.GrowthParameter.GrownLR.Value(grown_lr)
        s = Solver(sp, verbose=False)
        s.add_callback(Capture())
        s.solve()
        assert seen["rate"] == pytest.approx(0.05 * 0.01)
        for key, w in seen["w"].items():
            layer = key.split("[")[0]
            stage = layer_stage(s.net.layer(layer).layer_param)
            rate = 0.05 if (stage > 0 and grown_lr == "CONSTANT_BASE_LR") else seen["rate"]
            torch.testing.assert_close(seen["w1"][key], w - rate * seen["g"][key], rtol=1e-5, atol=1e-7)
        assert {k: m for k, m in seen["mult"].items() if m != 1.0} == {}  # lr_mult restored after the update
        assert s.net.has_layer("cell3_conv") and layer_stage(s.net.layer("cell3_conv").layer_param) == 1


@pytest.mark.parametrize("policy", ["ITERATIVE", "NORMAL"])
def test_resume_after_a_growth_or_prune_epoch_is_bit_identical(data, tmp_path, policy):
    net = make_net(data, tmp_path, ics="0,1,0,1,1")
    keep = [0.8] if policy == "ITERATIVE" else [0.6]

    def sp(prefix):
        p = solver_param(net, tmp_path, 14, growth=(3, 5), snip={"epoch": [3, 4, 6], "policy": policy, "keep": keep,
                                                                  "min": [0.5] if policy == "ITERATIVE" else []},
                         epoch_iters=2, snapshot=4, lr_policy="step", stepsize=6, gamma=0.5, freeze_zero_params=True,
                         test_interval=5, snapshot_prefix=str(tmp_path / prefix))
        p.growth.grown_lr = pb.GrowthParameter.CONSTANT_BASE_LR
        return p
    full = Solver(sp("full"), verbose=False)
    full.solve()
    assert full.net.has_layer("ic3") and full.net.layer("ic3").weight_mask.min() == 0
    a_model = (tmp_path / "full_iter_14.caffemodel").read_bytes()
    a_state = pb.SolverState.FromString((tmp_path / "full_iter_14.solverstate").read_bytes())
    # iteration 4 = the start of epoch 3 (growth to stage 1, then a prune); 8 = epoch 5 (stage 2)
    for it in (4, 8):
        r = Solver(sp(f"resumed{it}"), verbose=False)
        r.solve(resume_file=str(tmp_path / f"full_iter_{it}.solverstate"))
        assert (tmp_path / f"resumed{it}_iter_14.caffemodel").read_bytes() == a_model, it
        b_state = pb.SolverState.FromString((tmp_path / f"resumed{it}_iter_14.solverstate").read_bytes())
        assert [h.SerializeToString() for h in a_state.history] == [h.SerializeToString() for h in b_state.history]


def test_configuration_errors(data, tmp_path):
    net = make_net(data, tmp_path, ics="0,1,1")
    with pytest.raises(NetcompressError, match="NORMAL takes one keep_ratio"):
        Solver(solver_param(net, tmp_path, 2, snip={"epoch": [2], "policy": "NORMAL", "keep": [0.5, 0.4]}), verbose=False)
    with pytest.raises(NetcompressError, match=r"batch_size \(12\) must be a multiple of the TRAIN data layer's "
                                               r"batch_size \(8\)"):
        Solver(solver_param(net, tmp_path, 2, snip={"epoch": [2], "keep": [0.5], "batch_size": 12}), verbose=False)
    with pytest.raises(NetcompressError, match="growth.epoch must list increasing"):
        Solver(solver_param(net, tmp_path, 2, growth=(5, 3)), verbose=False)
    plain = tmp_path / "plain.prototxt"
    plain.write_text(open(net).read().replace("MaskedConvolution", "Convolution")
                     .replace("MaskedInnerProduct", "InnerProduct"))
    s = Solver(solver_param(str(plain), tmp_path, 3, growth=(3,), snip={"epoch": [2], "keep": [0.5]}), verbose=False)
    with pytest.raises(NetcompressError, match="prunes MaskedConvolution / MaskedInnerProduct layers"):
        s.solve()


def test_the_sdn_example_grows_and_prunes_on_a_short_schedule(tmp_path):
    """examples/sdn: its template, make_sdn_net arguments and solver, with 1-iteration epochs."""
    from pathlib import Path

    from netcompress import io as ncio
    from netcompress.data.mnist5k import ensure_mnist5k

    example = Path(__file__).resolve().parents[2] / "examples" / "sdn"
    train, test = ensure_mnist5k(str(tmp_path))
    tpl = tmp_path / "cells.prototxt-template"
    tpl.write_text((example / "cells.prototxt-template").read_text()
                   .replace("data/mnist5k_train_lmdb", train).replace("data/mnist5k_test_lmdb", test))
    run = (example / "run.sh").read_text()
    args = re.search(r"make_sdn_net examples/sdn/cells.prototxt-template (.*?) \\\n\s*(.*?) --out", run, re.S)
    net = str(tmp_path / "sdn.prototxt")
    assert sdn.make_sdn_net_main([str(tpl), *args.group(1).split(), *args.group(2).split(), "--out", net]) == 0
    sp = ncio.read_solver(str(example / "solver.prototxt"))
    assert sp.max_iter == 630 and list(sp.growth.epoch) == [2, 4, 6]
    sp.net, sp.epoch_iters, sp.max_iter, sp.test_interval, sp.snapshot_prefix = net, 1, 9, 0, str(tmp_path / "s")
    s = Solver(sp, verbose=False)
    (cb,) = [c for c in s.callbacks if type(c).__name__ == "SnipSchedule"]
    s.solve()
    assert s.net.has_layer("fc") and s.net.has_layer("cell7_conv2")
    assert [(e["epoch"], e["block"], round(e["keep"], 6)) for e in cb.events] == [
        (3, 0, 0.6), (3, 1, 0.6), (5, 0, 0.36), (5, 1, 0.36), (5, 2, 0.6), (7, 0, 0.3), (7, 1, 0.3),
        (7, 2, 0.36), (7, 3, 0.6), (9, 0, 0.3), (9, 1, 0.3), (9, 2, 0.3), (9, 3, 0.36)]
    assert all(e["kept"] == e["k"] for e in cb.events)
