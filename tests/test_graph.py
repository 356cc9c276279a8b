"""netcompress.graph: Caffe's Split layers and Net::Init's backward analysis, in the core Net's set-up log and
in pycaffe's view, against the log Caffe itself wrote for the fixture LeNet."""
from __future__ import annotations

import lzma
import re

import pytest
import torch
from google.protobuf import text_format

from netcompress import pycaffe as caffe
from netcompress.graph import plan_splits, remove_splits
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb

from log_helpers import netcompress_log


@pytest.fixture
def net_log():
    """The messages netcompress/net.py logs (Caffe's net.cpp lines), and the Data layer's own ("Opened lmdb",
    "output data size")."""
    with netcompress_log(lambda r: r.filename in ("net.py", "data.py")) as h:
        yield h.lines


def _caffe_net_setups(caffe_fixtures, log_name: str = "train_lenet.log.xz") -> list[list[str]]:
    """Caffe's net.cpp, layer_factory.hpp, db_lmdb.cpp and data_layer.cpp lines of each net set-up in one of its
    logs (training: the TRAIN net, then the TEST net)."""
    log = lzma.decompress((caffe_fixtures / "lenet" / log_name).read_bytes()).decode()
    nets, cur = [], []
    for m in re.finditer(r"^I\S+ \S+ +\d+ (?:net\.cpp|layer_factory\.hpp|data_layer\.cpp|db_lmdb\.cpp):\d+\] (.*)$",
                         log, re.M):
        cur.append(m.group(1))
        if m.group(1) == "Network initialization done.":
            nets.append(cur)
            cur = []
    return nets


@pytest.mark.parametrize("phase, log_name, index", [(pb.TRAIN, "train_lenet.log.xz", 0),
                                                    (pb.TEST, "train_lenet.log.xz", 1),
                                                    (pb.TEST, "caffe_test.log.xz", 0)])
def test_the_set_up_log_is_caffes_line_for_line(in_fixture_workdir, caffe_fixtures, net_log, phase, log_name, index):
    """Every net.cpp, layer_factory.hpp, db_lmdb.cpp and data_layer.cpp line Caffe logged while setting up the
    fixture LeNet in `caffe train` (its TRAIN and TEST nets) and `caffe test` (Split layers with their tops and
    memory, bottoms renamed to Split tops, the backward analysis, outputs), in order, with the parameter dump after
    "Initializing net from parameters" spelt as protobuf C++ spells it (`lr_mult: 1`; Python's text_format writes
    `lr_mult: 1.0`)."""
    want = _caffe_net_setups(caffe_fixtures, log_name)[index]
    log = lzma.decompress((caffe_fixtures / "lenet" / log_name).read_bytes()).decode()
    dumps = re.findall(r"net\.cpp:\d+\] (Initializing net from parameters: \n.*?)\n(?=[IWEF]\d)", log, re.S)
    Net("lenet/lenet_train_test.prototxt", phase=phase)
    got = [line for line in net_log if not line.startswith("Initializing net from parameters")]
    want = [line for line in want if not line.startswith("Initializing net from parameters")]
    assert got == want
    # (the state's `level: 0` and `stage: ""` aside: `caffe`'s --level and --stage flags set them, its --stage's
    # default "" split on commas into one empty stage, in the TRAIN net's and `caffe test`'s state only)
    def plain(dump: str) -> str:
        return dump.replace("  level: 0\n", "").replace('  stage: ""\n', "")

    assert [plain(line) for line in net_log if line.startswith("Initializing net from parameters")] == \
        [plain(dumps[index]) + "\n"]  # (the message's own last newline: glog added none)
    # the TEST net reads label and ip2 twice (accuracy and loss): Caffe's two Split layers
    assert ("label_mnist_1_split does not need backward computation." in got) == (phase == pb.TEST)


def _net(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


BRANCHES = """
layer { name: "d" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 4 } }
layer { name: "probe" type: "InnerProduct" bottom: "a" top: "probe" inner_product_param { num_output: 2 } }
layer { name: "frozen" type: "InnerProduct" bottom: "a" top: "f" param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "f" bottom: "label" top: "loss" }
"""


def test_a_branch_that_feeds_no_loss_needs_no_backward_and_force_backward_turns_all_on(net_log):
    param = _net(BRANCHES)
    net = Net(param, phase=pb.TRAIN)
    lines = [line for line in net_log if "backward computation" in line]
    assert lines == ["loss needs backward computation.", "frozen needs backward computation.",
                     "probe does not need backward computation.", "a_a_0_split needs backward computation.",
                     "a needs backward computation.", "d does not need backward computation."]
    assert net.layer_need_backward == {"loss": True, "frozen": True, "probe": False, "a": True, "d": False}
    # force_backward: Caffe logs the analysis before forcing; afterwards every layer needs a backward, and every
    # bottom gets a diff except the loss layer's labels (AllowForceBackward)
    param.force_backward = True
    net_log.clear()
    net = Net(param, phase=pb.TRAIN)
    assert [line for line in net_log if "backward computation" in line] == lines
    assert all(net.layer_need_backward.values())
    needs = net.backward  # in Caffe's order: each layer, then the Split layers after it
    names = ["d", "a", "a_a_0_split", "probe", "frozen", "loss"]
    assert len(needs.layer) == len(names)
    assert needs.bottom[names.index("loss")] == [True, False]
    assert needs.logged[names.index("probe")] is False and needs.layer[names.index("probe")] is True


def test_propagate_down_false_stops_the_backward_below_it(net_log):
    param = _net(BRANCHES.replace('bottom: "a" top: "f"', 'bottom: "a" top: "f" propagate_down: false'))
    net = Net(param, phase=pb.TRAIN)
    # nothing below 'frozen' is asked for a gradient; 'frozen' itself still "needs" one, as Caffe decides (a
    # bottom that needs a diff makes the layer need a backward before propagate_down is looked at)
    assert net.layer_need_backward == {"loss": True, "frozen": True, "probe": False, "a": False, "d": False}


LSTM_NET = """
force_backward: true
layer { name: "d" type: "DummyData" top: "x" top: "cont" top: "label"
        dummy_data_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 3 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "ip" inner_product_param { num_output: 3 axis: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" softmax_param { axis: 2 } }
"""


def test_force_backward_gives_no_diff_to_a_recurrent_layers_cont(tmp_path):
    """Caffe's RecurrentLayer::AllowForceBackward refuses bottom 1 (cont); LSTMUnit bottom 2; loss layers their
    labels; EuclideanLoss neither of its bottoms."""
    path = tmp_path / "lstm.prototxt"
    path.write_text(LSTM_NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    need = dict(zip(net._layer_names, net._bottom_need))
    assert need["lstm"] == [True, False]
    assert need["loss"] == [True, False]
    core = Net(_net(LSTM_NET), phase=pb.TRAIN)
    assert [core.layer(n).allow_force_backward(k) for n, k in (("lstm", 0), ("lstm", 1), ("loss", 1))] == \
        [True, False, False]


def test_splits_carry_an_explicit_loss_weight_and_rename_bottoms():
    param = _net("""
        layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }
        layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "l" loss_weight: 0.5 }
        layer { name: "use" type: "Power" bottom: "l" top: "p" }""")
    plan = plan_splits(param.layer)
    assert plan.bottoms == [[], ["x_d_0_split_0", "x_d_0_split_1"], ["l_e_0_split_1"]]
    assert [(s.name, s.bottom, s.tops, s.loss_weight) for s in plan.splits[1]] == \
        [("l_e_0_split", "l", ["l_e_0_split_0", "l_e_0_split_1"], 0.5)]
    assert plan.cleared == [False, True, False]
    # an unknown bottom is left for the net to report where it builds the layer
    assert plan_splits(_net('layer { name: "u" type: "ReLU" bottom: "nope" top: "y" }').layer).bottoms == [["nope"]]


SPLIT_NET = """
name: "branches"
layer { name: "d" type: "DummyData" top: "x" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "gaussian" } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 4
        weight_filler { type: "gaussian" } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 3
        weight_filler { type: "gaussian" } } }
layer { name: "c" type: "InnerProduct" bottom: "a" top: "c" inner_product_param { num_output: 3
        weight_filler { type: "gaussian" } } }
layer { name: "sum" type: "Eltwise" bottom: "b" bottom: "c" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
"""


def test_saved_models_hold_caffes_split_layers_and_load_back_quietly(tmp_path, net_log):
    """Caffe's Net::ToProto writes the Split layers it inserted and the renamed bottoms: so does the core's save
    (a model re-saved is Caffe's byte for byte), and loading such a model names no Split layer as ignored."""
    net = Net(_net(SPLIT_NET), phase=pb.TRAIN, seed=1)
    proto = net.to_proto()
    assert [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in proto.layer] == [
        ("d", "DummyData", [], ["x", "label"]),
        ("a", "InnerProduct", ["x"], ["a"]),
        ("a_a_0_split", "Split", ["a"], ["a_a_0_split_0", "a_a_0_split_1"]),
        ("b", "InnerProduct", ["a_a_0_split_0"], ["b"]),
        ("c", "InnerProduct", ["a_a_0_split_1"], ["c"]),
        ("sum", "Eltwise", ["b", "c"], ["s"]),
        ("loss", "SoftmaxWithLoss", ["s", "label"], ["loss"]),
    ]
    split = proto.layer[2]
    assert split.phase == pb.TRAIN and not len(split.blobs) and not len(split.loss_weight)
    path = tmp_path / "m.caffemodel"
    net.save(str(path))
    # pycaffe's save writes the same bytes
    (tmp_path / "net.prototxt").write_text(SPLIT_NET)
    pc = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN, weights=str(path))
    pc.save(str(tmp_path / "p.caffemodel"))
    assert (tmp_path / "p.caffemodel").read_bytes() == path.read_bytes()
    net_log.clear()
    other = Net(_net(SPLIT_NET), phase=pb.TRAIN, seed=2, weights=str(path))
    assert not [line for line in net_log if "Ignoring source layer" in line]
    for name in ("a", "b", "c"):
        assert torch.equal(other.layer(name).weight, net.layer(name).weight)


def test_remove_splits_undoes_insert_splits():
    """A saved model's Split layers removed give back the net as written: bottoms read the Split's bottom,
    and a loss weight InsertSplits moved onto a Split goes back to its layer."""
    written = _net(SPLIT_NET)
    saved = Net(written, phase=pb.TRAIN, seed=1, verbose=False).to_proto()
    assert "Split" in [lp.type for lp in saved.layer]
    back = remove_splits(saved)
    assert [(lp.name, list(lp.bottom), list(lp.top)) for lp in back.layer] == \
        [(lp.name, list(lp.bottom), list(lp.top)) for lp in written.layer]
    assert [len(lp.blobs) for lp in back.layer] == [len(lp.blobs) for lp in saved.layer if lp.type != "Split"]
    weighted = _net("""
        layer { name: "d" type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: 3 } } }
        layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "x" top: "l" loss_weight: 0.5 }
        layer { name: "use" type: "Power" bottom: "l" top: "p" }""")
    saved = Net(weighted, phase=pb.TRAIN, verbose=False).to_proto()
    e = next(lp for lp in saved.layer if lp.name == "e")
    # InsertSplits cleared e's 0.5 (the Split carries it); the loss layer's set-up then gave it 1, which Caffe's
    # ToProto writes
    assert list(e.loss_weight) == [1.0] and list(e.bottom) == ["x_d_0_split_0", "x_d_0_split_1"]
    back = remove_splits(saved)
    assert [lp.name for lp in back.layer] == ["d", "e", "use"]
    assert list(back.layer[1].bottom) == ["x", "x"] and list(back.layer[1].loss_weight) == [0.5]
    assert list(back.layer[2].bottom) == ["l"]
