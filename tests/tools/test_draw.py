"""draw_net / caffe.draw: the graph of a net as Caffe's drawing module builds it (pydot), DOT text and images."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from netcompress import cli
from netcompress import io as ncio
from netcompress.errors import NetcompressError
from netcompress.proto import caffe_pb2 as pb

pydot = pytest.importorskip("pydot", reason="drawing nets needs the optional pydot package")

LENET = Path(__file__).resolve().parents[2] / "examples" / "mnist" / "lenet_train_test.prototxt"


def _graph(path, rankdir="LR", phase=None, display_lrm=False):
    """The graph draw_net built for `path` (compared with its DOT text, so the file is that graph)."""
    from netcompress.tools.draw import get_pydot_graph

    g = get_pydot_graph(ncio.read_net(str(LENET)), rankdir, phase=phase, display_lrm=display_lrm)
    assert Path(path).read_text() == g.to_string()
    nodes = {n.get_name().strip('"'): n for n in g.get_nodes()}
    edges = [(e.get_source().strip('"'), e.get_destination().strip('"'), e.get("label")) for e in g.get_edges()]
    return g, nodes, edges


def test_draw_net_writes_caffes_graph_as_dot_text(tmp_path, capsys):
    out = tmp_path / "lenet.dot"
    assert cli.main(["draw_net", str(LENET), str(out), "--display_lrm"]) == 0
    assert f"Drawing net to {out}" in capsys.readouterr().out
    g, nodes, edges = _graph(out, display_lrm=True)
    assert g.get_name() == "LeNet" and g.get("rankdir") == "LR"
    conv1 = r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0\nlr mult: 1.0, 2.0"
    assert nodes[conv1].get("fillcolor").strip('"') == "#FF5050" and nodes[conv1].get("shape") == "record"
    pool1 = r"pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0"
    assert nodes[pool1].get("fillcolor").strip('"') == "#FF9900"
    assert nodes[r"relu1\n(ReLU)"].get("fillcolor").strip('"') == "#90EE90"  # in place
    assert nodes["data"].get("shape") == "octagon"
    assert ("data", conv1, '""') in edges and (conv1, "conv1", "20") in edges
    # both Data layers (all phases) and the TEST-only accuracy layer
    assert sum(1 for e in edges if e[1] == "data") == 2
    assert any(name.startswith(r"accuracy\n") for name in nodes)


def test_phase_and_rankdir(tmp_path):
    out = tmp_path / "train.gv"
    assert cli.main(["draw_net", str(LENET), str(out), "--phase", "TRAIN", "--rankdir", "TB"]) == 0
    _, nodes, edges = _graph(out, "TB", pb.TRAIN)
    assert not any(name.startswith("accuracy") for name in nodes)  # TEST only
    assert sum(1 for e in edges if e[1] == "data") == 1
    assert "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0" in nodes  # vertical: words on one line


def test_caffe_draw_is_pycaffes_module(tmp_path, capsys):
    import netcompress.pycaffe as caffe

    net = ncio.read_net(str(LENET))
    caffe.draw.draw_net_to_file(net, str(tmp_path / "x.raw"), "LR", caffe.TEST)
    assert (tmp_path / "x.raw").read_text().startswith("digraph LeNet {")
    three = pb.LayerParameter(name="ip", type="InnerProduct")
    three.param.add(lr_mult=1), three.param.add(lr_mult=2), three.param.add(lr_mult=3)
    with pytest.raises(NetcompressError, match=r"layer 'ip' \(InnerProduct\) has 3 param specs; it has at most 2"):
        caffe.draw.get_layer_lr_mult(three)  # a bad net (it was a ValueError, a bug in netcompress at the command line)
    bad = tmp_path / "three.prototxt"
    bad.write_text(f"layer {{ {three} }}".replace("\n", " "))
    assert cli.main(["draw_net", str(bad), str(tmp_path / "three.dot"), "--display_lrm"]) == 1
    assert f"Error: {bad}: layer 'ip' (InnerProduct) has 3 param specs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        caffe.draw.get_layer_lr_mult(pb.LayerParameter(type="ReLU"))


def test_images_need_graphviz(tmp_path, capsys):
    out = tmp_path / "lenet.png"
    if shutil.which("dot") is None:
        assert cli.main(["draw_net", str(LENET), str(out)]) == 1
        assert "drawing a .png file needs Graphviz's 'dot' program" in capsys.readouterr().err
        assert not out.exists()
    else:
        assert cli.main(["draw_net", str(LENET), str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["draw_net", str(LENET), str(tmp_path / "noext")]) == 1
    assert "no extension to take the image format from" in capsys.readouterr().err
    (tmp_path / "v1.2").mkdir()  # a dot in a folder's name is no extension
    assert cli.main(["draw_net", str(LENET), str(tmp_path / "v1.2" / "noext")]) == 1
    assert "no extension to take the image format from" in capsys.readouterr().err


def test_draw_net_to_file_takes_a_path_object(tmp_path):
    import netcompress.pycaffe as caffe

    caffe.draw.draw_net_to_file(ncio.read_net(str(LENET)), tmp_path / "lenet.dot")
    assert (tmp_path / "lenet.dot").read_text().startswith("digraph LeNet {")


def test_without_pydot_the_error_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydot", None)
    assert cli.main(["draw_net", str(LENET), str(tmp_path / "x.dot")]) == 1
    assert "drawing a net needs the 'pydot' package: pip install pydot" in capsys.readouterr().err


def test_names_with_quotes_and_backslashes_stay_one_node_each(tmp_path):
    """A blob named `co"nv1` drew stray nodes ('nv1 [label=20];') and a layer so named made Graphviz fail (Caffe's
    script writes them unescaped too): the DOT text now escapes them, and reads back as the same graph."""
    text = (LENET.parent / "lenet.prototxt").read_text()
    text = text.replace('name: "conv1"', r'name: "conv\"1 {x}; -> y\\z"', 1)
    text = text.replace('top: "conv1"', r'top: "co\"nv1"', 1).replace('bottom: "conv1"', r'bottom: "co\"nv1"', 1)
    net = tmp_path / "quoted.prototxt"
    net.write_text(text)
    out = tmp_path / "quoted.dot"
    assert cli.main(["draw_net", str(net), str(out)]) == 0
    plain = tmp_path / "plain.dot"
    assert cli.main(["draw_net", str(LENET.parent / "lenet.prototxt"), str(plain)]) == 0
    import warnings

    with warnings.catch_warnings():  # (pydot's own parser calls pyparsing names that pyparsing 3.3 deprecates)
        warnings.simplefilter("ignore", DeprecationWarning)
        read, base = (pydot.graph_from_dot_data(p.read_text())[0] for p in (out, plain))
    names = sorted(n.get_name() for n in read.get_nodes() if n.get_name() not in ("node", "edge", "graph"))
    assert len(names) == len([n for n in base.get_nodes() if n.get_name() not in ("node", "edge", "graph")])
    assert r'"co\"nv1"' in names and any(n.startswith(r'"conv\"1 {x}; -> y\\z\n(Convolution)') for n in names)
    assert len(read.get_edges()) == len(base.get_edges())
    if shutil.which("dot"):
        png = tmp_path / "quoted.png"
        assert cli.main(["draw_net", str(net), str(png)]) == 0 and png.read_bytes()[:4] == b"\x89PNG"
