"""snip_prune (recipes-spec 2.1, 5.5, T6): connection sensitivity, the global top-k, the output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from netcompress import cli
from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.recipes.snip import connection_sensitivity, keep_masks
from netcompress.tools import convert, report, snip

REPO = Path(__file__).resolve().parents[2]
LENET_WEIGHTS = 430_500  # conv1 500 + conv2 25,000 + ip1 400,000 + ip2 5,000


def lenet_with_batch(src: Path, dst: Path, batch: int) -> str:
    text = src.read_text()
    assert "batch_size: 64" in text
    dst.write_text(text.replace("batch_size: 64", f"batch_size: {batch}", 1))
    return str(dst)


def autograd_scores(model: str, x: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
    """|dL/dW * W| of the fixture LeNet in plain torch (float64): conv 20 5x5, max pool 2, conv 50
    5x5, max pool 2, fc 500, ReLU, fc 10, mean cross-entropy."""
    blobs = {l.name: [torch.from_numpy(ncio.blob_to_array(b).astype(np.float64)) for b in l.blobs]
             for l in ncio.read_caffemodel(model).layer if len(l.blobs)}
    W = {n: blobs[n][0].clone().requires_grad_(True) for n in ("conv1", "conv2", "ip1", "ip2")}
    h = torch.from_numpy(x.astype(np.float64) * 0.00390625)
    h = F.max_pool2d(F.conv2d(h, W["conv1"], blobs["conv1"][1]), 2, 2)
    h = F.max_pool2d(F.conv2d(h, W["conv2"], blobs["conv2"][1]), 2, 2)
    h = F.relu(F.linear(h.flatten(1), W["ip1"], blobs["ip1"][1]))
    h = F.linear(h, W["ip2"], blobs["ip2"][1])
    F.cross_entropy(h, torch.from_numpy(y.astype(np.int64))).backward()
    return {n: (w.grad * w).abs().detach() for n, w in W.items()}


def test_snip_on_the_fixture_lenet_keeps_8610_and_matches_autograd(in_fixture_workdir, caffe_split, tmp_path,
                                                                   blobs_of, capsys):
    wd = in_fixture_workdir
    train = lenet_with_batch(wd / "lenet" / "lenet_train_test.prototxt", tmp_path / "lenet100.prototxt", 100)
    weights = str(wd / "lenet" / "lenet_iter_5000.caffemodel")
    out_proto, out_model = str(tmp_path / "snip.prototxt"), str(tmp_path / "snip_raw.caffemodel")
    r = snip.snip_prune(train, weights, out_proto, out_model, 0.02, reinit="none", seed=1)
    printed = capsys.readouterr().out.splitlines()

    # The scores are |g * w| of an independent autograd computation on the first 100 training digits.
    split = caffe_split
    ref = autograd_scores(weights, split["train_x"][:100], split["train_y"][:100])
    assert r.layers == ["conv1", "conv2", "ip1", "ip2"]
    for n in r.layers:
        np.testing.assert_allclose(r.scores[n].double().numpy(), ref[n].numpy(), rtol=2e-3, atol=1e-9)

    # Global top-k: k = int(430,500 * 0.02) = 8,610 and, without ties, exactly k kept; the kept
    # weights are the reference's top 8,610 except within rounding of the threshold.
    assert (r.weights, r.k, r.kept) == (LENET_WEIGHTS, 8610, 8610)
    flat = torch.cat([ref[n].reshape(-1) for n in r.layers])
    thr = torch.topk(flat, 8610).values[-1]
    for n in r.layers:
        mine, theirs = r.masks[n].double(), (ref[n] >= thr).double()
        near = (ref[n] - thr).abs() <= 2e-3 * thr
        assert torch.equal(mine[~near], theirs[~near]), n
    assert sum(int(r.masks[n].sum()) for n in r.layers) == 8610

    # The output: Masked* layers, all bias masks 1, pruned weights 0, the rest the given weights.
    net = ncio.read_net(out_proto)
    assert [l.type for l in net.layer if l.name in r.layers] == \
        ["MaskedConvolution", "MaskedConvolution", "MaskedInnerProduct", "MaskedInnerProduct"]
    raw, dense = blobs_of(out_model), blobs_of(weights)
    for n in r.layers:
        w, b, wm, bm = raw[n]
        assert np.all(bm == 1) and b.size == bm.size  # biases are never masked
        np.testing.assert_array_equal(wm, r.masks[n].numpy())
        np.testing.assert_array_equal(w, np.where(wm == 1, dense[n][0], 0))
        np.testing.assert_array_equal(b, dense[n][1])
    assert "SNIP: kept 8610 of 430500 weights of 4 layers (keep ratio 0.02, k = 8610); scored on 1 TRAIN " \
           "batch, the net weights, seed 1" in printed
    assert "Final Statistics: 9190/ 431080 (2.131855 %) kept" in printed  # + the 580 biases

    # dns_to_normal converts it, with the same statistics block.
    normal = str(tmp_path / "normal.caffemodel")
    assert convert.dns_to_normal_main([out_proto, out_model, train, normal]) == 0
    converted = capsys.readouterr().out.splitlines()
    assert converted[:len(printed) - 2] == printed[:-2]  # the per-layer blocks and the final lines
    got = blobs_of(normal)
    for n in r.layers:
        np.testing.assert_array_equal(got[n][0], raw[n][0])
    assert report.main([out_proto, out_model]) == 0
    assert "Final Statistics: 9190/ 431080 (2.131855 %) kept" in capsys.readouterr().out


def test_connection_sensitivity_leaves_the_net_as_it_was(tmp_path, lmdb_writer):
    """Scoring peeks at the next TRAIN batches: blobs (BatchNorm statistics too), data positions and
    generators are restored, and an SDNLoss scores with coefficients 1."""
    rs = np.random.RandomState(0)
    lmdb_writer(tmp_path / "db", (rs.rand(12, 1, 6, 6) * 255).astype(np.uint8), rs.randint(0, 3, 12))
    text = f"""
name: "n"
layer {{ name: "data" type: "Data" top: "data" top: "label"
        transform_param {{ scale: 0.00390625 }} data_param {{ source: "{tmp_path / 'db'}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "conv" type: "MaskedConvolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 3 kernel_size: 3 weight_filler {{ type: "xavier" }} }}
        dns_convolution_param {{ weight_mask_filler {{ type: "constant" value: 1 }} bias_mask_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }}
layer {{ name: "drop" type: "Dropout" bottom: "conv" top: "conv" }}
layer {{ name: "ic" type: "MaskedInnerProduct" bottom: "conv" top: "ic"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }}
        dns_inner_product_param {{ weight_mask_filler {{ type: "constant" value: 1 }} bias_mask_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "fc" type: "MaskedInnerProduct" bottom: "conv" top: "fc"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }}
        dns_inner_product_param {{ weight_mask_filler {{ type: "constant" value: 1 }} bias_mask_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "loss" type: "SDNLoss" bottom: "ic" bottom: "fc" bottom: "label" top: "loss"
        sdn_loss_param {{ epoch_iters: 3 ramp_epochs: 100 }} }}
"""
    path = tmp_path / "n.prototxt"
    path.write_text(text)
    net = Net(str(path), phase=pb.TRAIN, seed=2, verbose=False, dtype=torch.float64)
    net.set_iteration(0)
    net()  # one batch consumed, BatchNorm statistics moved
    with torch.no_grad():
        net.layer("conv").weight_mask[0, 0, 0, 0] = 0  # an entry already pruned scores 0
    before = {n: [t.clone() for t in l.blobs()] for n, l in net.named_layers() if l.blob_names}
    drop_rng = net.layer("drop").rng_state()
    gen = torch.Generator().manual_seed(5)
    scores = connection_sensitivity(net, ["conv", "ic", "fc"], batches=2, reinit=None)
    for n, saved in before.items():
        for t, s in zip(net.layer(n).blobs(), saved):
            assert torch.equal(t, s), n
    assert torch.equal(net.layer("drop").rng_state(), drop_rng)
    assert net.layer("data").batches_consumed == 1
    assert net.layer("loss").coefficient_override is None
    assert all(p.grad is None for p in net.parameters())
    assert float(scores["conv"][0, 0, 0, 0]) == 0 and float(scores["conv"].sum()) > 0

    # Independently: batches 1 and 2 (the next two), the mean of the two losses with both outputs
    # weighted 1, |dL/d(W*M) * (W*M)|.
    again = Net(str(path), phase=pb.TRAIN, seed=2, verbose=False, dtype=torch.float64)
    again.load_state_dict(net.state_dict())
    again.layer("data").seek(1)
    again.layer("loss").coefficient_override = 1.0
    again.layer("drop").set_rng_state(drop_rng)
    for _, l in again.named_layers():
        for t in l.blobs():
            t.requires_grad_(False)
    wm = {n: (again.layer(n).weight * again.layer(n).weight_mask).detach().requires_grad_(True)
          for n in ("conv", "ic", "fc")}
    for n in wm:  # the effective weights as leaves: d loss / d (W*M)
        again.layer(n).effective_weight = (lambda n=n: wm[n])
    total = 0
    for _ in range(2):
        again()
        total = total + again.blobs["loss"].sum() / 2
    total.backward()
    for n in wm:
        torch.testing.assert_close(scores[n], (wm[n].grad * wm[n]).abs().detach(), rtol=1e-10, atol=0)

    # Xavier re-initialisation scores other weights, draws from the generator, keeps the net's own.
    xs = connection_sensitivity(net, ["fc"], batches=1, reinit=gen)
    assert not torch.equal(xs["fc"], scores["fc"]) and torch.equal(net.layer("fc").weight, before["fc"][0])
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())


def test_a_loss_that_the_weights_do_not_reach_is_refused():
    # A loss_weight on an input blob (the only "loss"): autograd's "does not require grad" named no layer
    text = """
name: "n"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 } } loss_weight: 1 }
layer { name: "fc" type: "MaskedInnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } }
        dns_inner_product_param { weight_mask_filler { type: "constant" value: 1 }
                                  bias_mask_filler { type: "constant" value: 1 } } }
"""
    net = Net(ncio.parse_text_proto(text, pb.NetParameter()), phase=pb.TRAIN, verbose=False)
    net.set_input(data=torch.ones(2, 4))
    with pytest.raises(NetcompressError, match=r"net 'n': its loss \(data\) does not depend on the weights of fc: SNIP "
                                        r"scores the gradient"):
        connection_sensitivity(net, ["fc"])


def test_keep_masks_ties_and_edge_cases():
    s = {"a": torch.tensor([4.0, 3.0, 3.0, 1.0]), "b": torch.tensor([[2.0, 0.0]])}
    masks, k = keep_masks(s, 0.5)  # k = 3: the 3rd largest is 3, so ties keep 4.0, 3.0, 3.0
    assert k == 3 and masks["a"].tolist() == [1, 1, 1, 0] and masks["b"].tolist() == [[0, 0]]
    masks, k = keep_masks(s, 0.34)  # k = int(6 * 0.34) = 2: the tie at 3.0 keeps both
    assert k == 2 and int(sum(m.sum() for m in masks.values())) == 3
    masks, k = keep_masks(s, 0.1)  # k = 0
    assert k == 0 and all(float(m.sum()) == 0 for m in masks.values())
    with pytest.raises(Exception, match="all 0"):
        keep_masks({"a": torch.zeros(4)}, 0.5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The embedded MNIST digits as LMDBs, and LeNet's train/val prototxt reading them."""
    from netcompress.data.mnist5k import ensure_mnist5k

    root = tmp_path_factory.mktemp("mnist5k")
    train, test = ensure_mnist5k(str(root))
    text = (REPO / "examples" / "mnist" / "lenet_train_test.prototxt").read_text()
    text = text.replace("data/mnist5k_train_lmdb", train).replace("data/mnist5k_test_lmdb", test)
    (root / "lenet.prototxt").write_text(text)
    return root


def test_snip_prune_layers_regex_reinit_and_seed(digits, tmp_path, blobs_of, capsys):
    train = str(digits / "lenet.prototxt")
    outs = [(str(tmp_path / f"o{i}.prototxt"), str(tmp_path / f"o{i}.caffemodel")) for i in range(3)]
    a = snip.snip_prune(train, None, *outs[0], 0.1, layers="ip.*", seed=7, quiet=True)
    b = snip.snip_prune(train, None, *outs[1], 0.1, layers="ip.*", seed=7, quiet=True)
    assert a.layers == ["ip1", "ip2"] and a.k == int(405_000 * 0.1) and a.kept == a.k
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.layers)  # the seed decides everything
    types = {l.name: l.type for l in ncio.read_net(outs[0][0]).layer}
    assert types["conv1"] == "Convolution" and types["ip1"] == "MaskedInnerProduct"
    # Xavier draws are only scored: the written weights are the net's own fillers (seed 7) where kept.
    fillers = Net(outs[0][0], phase=pb.TRAIN, seed=7, verbose=False)
    raw = blobs_of(outs[0][1])
    for n in a.layers:
        own = fillers.layer(n).weight.detach().numpy()
        np.testing.assert_array_equal(raw[n][0], np.where(raw[n][2] == 1, own, 0))
    c = snip.snip_prune(train, None, *outs[2], 0.1, layers="ip.*", reinit="none", seed=7, quiet=True)
    assert any(not torch.equal(a.masks[n], c.masks[n]) for n in a.layers)
    # Two batches: the mean loss of batches 0 and 1.
    d = snip.snip_prune(train, None, *outs[2], 0.1, layers="ip2", batches=2, seed=7, quiet=True)
    assert d.layers == ["ip2"] and d.kept == 500


def test_snip_prune_cli_errors_and_registration(digits, tmp_path, capsys, monkeypatch):
    from netcompress.commands import COMMANDS

    assert "snip_prune" in COMMANDS and (REPO / "compression_scripts" / "snip_prune.py").is_file()
    train = str(digits / "lenet.prototxt")
    o1, o2 = str(tmp_path / "o.prototxt"), str(tmp_path / "o.caffemodel")
    assert cli.main(["snip_prune", train, o1, o2, "--keep-ratio", "0.5", "--layers", "ip2", "--seed", "1"]) == 0
    assert "ip2 layer w: 2500/5000 (50.000000 %) kept" in capsys.readouterr().out
    assert snip.main([train, o1, "--keep-ratio", "0.5"]) == 2
    assert "expected 3 or 4 files" in capsys.readouterr().err
    assert snip.main([train, o1, o2, "--keep-ratio", "0"]) == 1
    assert "--keep-ratio must lie in (0, 1]" in capsys.readouterr().err
    assert snip.main([train, o1, o2, "--keep-ratio", "0.1", "--layers", "nothing.*"]) == 1
    assert "no Convolution or InnerProduct layer with a name matching 'nothing.*'" in capsys.readouterr().err
    assert snip.main([train, str(tmp_path / "missing.caffemodel"), o1, o2, "--keep-ratio", "0.1"]) == 1
    assert "missing.caffemodel does not exist!" in capsys.readouterr().err
    import netcompress.net as ncnet  # a TRAIN net whose blobs cannot fit is refused before its first forward
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 64)
    o3, o4 = str(tmp_path / "p.prototxt"), str(tmp_path / "p.caffemodel")
    assert snip.main([train, o3, o4, "--keep-ratio", "0.1"]) == 1
    assert "the TRAIN net needs 0.0 GiB for its blobs and weights" in capsys.readouterr().err
    assert not os.path.exists(o3) and not os.path.exists(o4)
    monkeypatch.undo()
    r = subprocess.run([sys.executable, str(REPO / "compression_scripts" / "snip_prune.py"), "--help"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "--keep-ratio" in r.stdout


def _train_and_test(solver_file: Path, net: str, prefix: Path, iters: int, weights: str | None = None) -> float:
    from netcompress.solvers import Solver

    sp = ncio.read_solver(str(solver_file))
    sp.net, sp.max_iter, sp.test_interval = net, iters, 0
    sp.snapshot, sp.snapshot_after_train, sp.snapshot_prefix = 0, False, str(prefix)
    s = Solver(sp, verbose=False, weights=weights)
    s.solve()
    return dict(s.test(0))["accuracy"]


@pytest.mark.slow
def test_snip_keep_2_percent_from_scratch_stays_close_to_dense(digits, tmp_path):
    """T6's published anchor, CI variant: LeNet at 98 % sparsity by SNIP at initialisation (Xavier-scored,
    one TRAIN batch) trained 2,000 iterations with the fixture solver's settings, against the dense LeNet
    trained identically from the same fillers (seed 1).

    T6's bound, within 2 points of the dense model, was measured once at 5,000 iterations (dense 0.968,
    SNIP 0.952: examples/snip/README.md). At 2,000 iterations the sparse net is still catching up
    (measured: dense 0.970, SNIP 0.951, 1.9 points), so this shorter check allows 3 points."""
    train = str(digits / "lenet.prototxt")
    snip_proto, snip_raw = str(tmp_path / "snip.prototxt"), str(tmp_path / "snip_raw.caffemodel")
    r = snip.snip_prune(train, None, snip_proto, snip_raw, 0.02, seed=1, quiet=True)
    assert r.kept == 8610
    solver = REPO / "examples" / "snip" / "dense_solver.prototxt"
    dense = _train_and_test(solver, train, tmp_path / "dense", 2000)
    pruned = _train_and_test(solver, snip_proto, tmp_path / "snip", 2000, weights=snip_raw)
    assert dense >= 0.95
    assert pruned >= dense - 0.03, (pruned, dense)
