"""`Solver.rebuild_nets`: new NetState stages mid-training, with everything carried over by layer name."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver
from netcompress.solvers.callbacks import TrainingCallback

NET = """
name: "staged"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 mirror: true }
        data_param { source: "@TRAIN@" batch_size: 4 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } data_param { source: "@TEST@" batch_size: 5 backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { lr_mult: 1 } param { lr_mult: 0 }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.2 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "extra" type: "InnerProduct" bottom: "conv" top: "extra" include { stage: "more" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" include { not_stage: "more" } }
layer { name: "loss2" type: "SDNLoss" bottom: "extra" bottom: "fc" bottom: "label" top: "loss"
        include { stage: "more" } sdn_loss_param { policy: INRIA } }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "tscale" type: "Scale" bottom: "fc" top: "fc_scaled" include { phase: TEST } }
"""


@pytest.fixture
def solver_param(tmp_path, lmdb_writer):
    rs = np.random.RandomState(0)
    labels = rs.randint(0, 4, 30)
    imgs = (rs.rand(30, 1, 6, 6) * 255).astype(np.uint8)
    lmdb_writer(tmp_path / "train", imgs[:20], labels[:20])
    lmdb_writer(tmp_path / "test", imgs[20:], labels[20:])
    net = tmp_path / "net.prototxt"
    net.write_text(NET.replace("@TRAIN@", str(tmp_path / "train")).replace("@TEST@", str(tmp_path / "test")))

    def make(**kw) -> pb.SolverParameter:
        sp = pb.SolverParameter(net=str(net), base_lr=0.05, lr_policy="fixed", momentum=0.9, weight_decay=1e-3,
                                max_iter=6, display=0, test_interval=100, test_iter=[2], random_seed=5,
                                snapshot_prefix=str(tmp_path / "run"))
        for k, v in kw.items():
            if isinstance(v, pb.NetState):
                getattr(sp, k).CopyFrom(v)
            else:
                setattr(sp, k, v)
        return sp
    return make


class Heard(TrainingCallback):
    def __init__(self):
        self.rebuilt = 0

    def nets_rebuilt(self, solver) -> None:
        self.rebuilt += 1


def test_rebuild_adds_the_stage_layers_and_carries_everything_else(solver_param):
    heard = Heard()
    s = Solver(solver_param(), verbose=False, callbacks=[heard])
    s.step(3)
    old_net, old_params = s.net, {e.key: e for e in s.params}
    old_blobs = {n: [t.clone() for t in l.blobs()] for n, l in s.net.named_layers() if l.blob_names}
    old_hist = {e.key: [h.clone() for h in hist] for e, hist in zip(s.params, s.history)}
    drop_rng = s.net.layer("drop").rng_state()
    assert not s.net.has_layer("extra") and s.epoch_iters == 5
    with torch.no_grad():
        s.test_nets[0].layer("tscale").weight.fill_(3.0)  # a test-only layer keeps its own blobs

    s.rebuild_nets(["more"])
    assert heard.rebuilt == 1 and s.stages == ["more"] and s.net is not old_net
    assert s.net.has_layer("extra") and s.net.has_layer("loss2") and not s.net.has_layer("loss")
    assert "more" in s.net.state.stage and all("more" in t.state.stage for t in s.test_nets)
    # every blob of every old layer (BatchNorm statistics too), by name, in new tensors
    for n, saved in old_blobs.items():
        for t, v in zip(s.net.layer(n).blobs(), saved):
            assert torch.equal(t, v) and t is not v
    # params and history remapped by (layer, blob index); new parameters get zero history
    keys = [e.key for e in s.params]
    assert keys == ["conv[0]", "conv[1]", "bn[0]", "bn[1]", "bn[2]", "fc[0]", "fc[1]", "extra[0]", "extra[1]"]
    for e, hist in zip(s.params, s.history):
        if e.key in old_hist:
            assert all(torch.equal(h, o) for h, o in zip(hist, old_hist[e.key]))
            assert e.lr_mult == old_params[e.key].lr_mult
        else:
            assert e.layer == "extra" and all(float(h.abs().sum()) == 0 for h in hist)
    assert not s.net.layer("conv").bias.requires_grad  # lr_mult 0, as at construction
    # the layers' state: data position, Dropout generator; the epoch length on every net
    assert s.net.layer("data").batches_consumed == 3
    assert torch.equal(s.net.layer("drop").rng_state(), drop_rng)
    assert all(n.ctx.epoch_iters == 5 for n in [s.net, *s.test_nets])
    # test nets share the new train net's weights
    assert s.test_nets[0].layer("extra").weight is s.net.layer("extra").weight
    assert s.test_nets[0].layer("fc").weight is s.net.layer("fc").weight
    assert float(s.test_nets[0].layer("tscale").weight.detach().min()) == 3.0
    s.step(3)  # trains on: the new layer learns
    assert s.iter == 6 and s.net.layer("extra").weight.grad is not None


def test_new_layers_start_as_in_a_net_built_with_the_stage(solver_param, tmp_path):
    s = Solver(solver_param(), verbose=False)
    s.step(2)
    s.rebuild_nets(["more"])
    fresh = Solver(solver_param(train_state=pb.NetState(stage=["more"])), verbose=False)
    assert torch.equal(s.net.layer("extra").weight, fresh.net.layer("extra").weight)
    # ... or from the solver's weights files when they hold the layer
    fresh.net.save(str(tmp_path / "w.caffemodel"))
    with torch.no_grad():
        fresh.net.layer("extra").weight.mul_(3)
    fresh.net.save(str(tmp_path / "w3.caffemodel"))
    w = Solver(solver_param(), verbose=False, weights=str(tmp_path / "w3.caffemodel"))
    w.rebuild_nets(["more"])
    assert torch.equal(w.net.layer("extra").weight, fresh.net.layer("extra").weight)
    # rebuilding back removes the stage's layers
    w.rebuild_nets([])
    assert not w.net.has_layer("extra") and [e.key for e in w.params][-1] == "fc[1]"


def test_a_layer_that_changes_shape_between_stages_is_an_error(solver_param, tmp_path):
    text = NET.replace('layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"\n        inner_product_param '
                       '{ num_output: 4',
                       'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" include { not_stage: "more" }\n'
                       '        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }\n'
                       'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" include { stage: "more" }\n'
                       '        inner_product_param { num_output: 5')
    assert text != NET
    sp = solver_param()
    path = tmp_path / "shape.prototxt"
    path.write_text(text.replace("@TRAIN@", str(tmp_path / "train")).replace("@TEST@", str(tmp_path / "test")))
    sp.net = str(path)
    s = Solver(sp, verbose=False)
    with pytest.raises(NetcompressError, match="layer 'fc' changes the shape of blob 'weight' from \\[4, 48\\] "
                                               "to \\[5, 48\\] between stages"):
        s.rebuild_nets(["more"])


def test_layers_sharing_a_name_carry_over_each_its_own(solver_param, tmp_path):
    # Caffe lets two layers share a name ("fc" twice here, of different shapes): the k-th of the new net takes
    # the k-th of the old one's blobs and history (both took the last's: a shape error).
    text = NET.replace('layer { name: "extra"',
                       'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc2"\n'
                       '        inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }\n'
                       'layer { name: "extra"')
    assert text != NET
    sp = solver_param(test_interval=0)
    del sp.test_iter[:]  # (a test net shares weights by name, the first of a name: Caffe too fails on these)
    path = tmp_path / "twice.prototxt"
    path.write_text(text.replace("@TRAIN@", str(tmp_path / "train")).replace("@TEST@", str(tmp_path / "test")))
    sp.net = str(path)
    s = Solver(sp, verbose=False)
    s.step(3)
    fcs = lambda net: [l for n, l in net.named_layers() if n == "fc"]  # noqa: E731
    old_blobs = [[t.clone() for t in l.blobs()] for l in fcs(s.net)]
    assert [tuple(b[0].shape) for b in old_blobs] == [(4, 48), (6, 48)]
    old_hist = [[h.clone() for h in hist] for e, hist in zip(s.params, s.history) if e.layer == "fc"]
    assert len(old_hist) == 4 and float(old_hist[0][0].abs().sum()) > 0 and float(old_hist[2][0].abs().sum()) > 0
    s.rebuild_nets(["more"])
    for layer, saved in zip(fcs(s.net), old_blobs):
        assert all(torch.equal(t, v) for t, v in zip(layer.blobs(), saved))
    new_hist = [hist for e, hist in zip(s.params, s.history) if e.layer == "fc"]
    assert all(torch.equal(h, o) for hs, os_ in zip(new_hist, old_hist) for h, o in zip(hs, os_))
    s.step(2)
    assert s.iter == 5
