"""Caffe's Python layer: pycaffe layer classes (`import caffe`, caffe.Layer) run unchanged inside a net.

The layer modules below are written as a Caffe user writes them (Caffe's own python/caffe/test/test_python_layer.py
and examples/pycaffe/layers/pyloss.py exercise the same API: a layer that scales by ten, one with a parameter blob,
one that reads `phase` and `param_str`, a Euclidean loss), and imported from the current directory.
"""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress.errors import NetcompressError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver

LAYERS = '''
import numpy as np
import caffe


class RaisesRuntime(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("bad setup")


class RaisesKey(caffe.Layer):
    def setup(self, bottom, top):
        raise KeyError("missing")


class Times10(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class Scaled(caffe.Layer):
    """y = a x with a learnable scalar a (one parameter blob)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = np.sum(top[0].diff * bottom[0].data)
        bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class PhasePlus(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase + self.k

    def backward(self, top, propagate_down, bottom):
        pass


class Euclidean(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Broken(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise ValueError("no forward today")

    def backward(self, top, propagate_down, bottom):
        pass


class NotALayer:
    pass


class DropsBlobs(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs = None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


class Grows(caffe.Layer):
    """A top one value longer at each forward (Caffe allows a top reshaped in forward)."""

    def setup(self, bottom, top):
        self.n = 1

    def reshape(self, bottom, top):
        top[0].reshape(self.n)

    def forward(self, bottom, top):
        self.n += 1
        top[0].reshape(self.n)
        top[0].data[...] = 1

    def backward(self, top, propagate_down, bottom):
        pass


class Misbehaves(caffe.Layer):
    """One parameter blob; param_str says what goes wrong: its blob reshaped in forward or backward, a blob added,
    the bottom reshaped in backward, the top's shape changed in forward."""

    def setup(self, bottom, top):
        self.blobs.add_blob(3)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        if self.param_str == "blob in forward":
            self.blobs[0].reshape(7)
        elif self.param_str == "blob added":
            self.blobs.add_blob(1)
        elif self.param_str == "blob replaced":
            self.blobs[0] = 3
        elif self.param_str == "top":
            top[0].reshape(3, 7)

    def backward(self, top, propagate_down, bottom):
        if self.param_str == "blob in backward":
            self.blobs[0].reshape(2)
        elif self.param_str == "bottom in backward":
            bottom[0].reshape(5)
'''


@pytest.fixture
def layer_dir(tmp_path, monkeypatch):
    """A folder holding the user's layer module (a fresh name per test), as the current directory; `caffe` and
    the module are forgotten afterwards."""
    name = f"user_layers_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(LAYERS)
    monkeypatch.chdir(tmp_path)
    had_caffe = "caffe" in sys.modules
    yield tmp_path, name
    sys.modules.pop(name, None)
    if not had_caffe:
        sys.modules.pop("caffe", None)


def _net(text: str, phase=pb.TRAIN, **kw) -> Net:
    return Net(text_format.Parse(text, pb.NetParameter()), phase=phase, verbose=False, **kw)


def _py(name: str, module: str, cls: str, bottoms=(), tops=(), extra: str = "") -> str:
    lines = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
    return (f'layer {{ type: "Python" name: "{name}"{lines} python_param {{ module: "{module}" layer: "{cls}" }}'
            f' {extra} }}\n')


def test_three_layers_scale_forward_and_backward_as_in_caffe(layer_dir):
    _, mod = layer_dir
    text = ('name: "py" force_backward: true input: "data" input_shape { dim: 10 dim: 9 dim: 8 }\n'
            + _py("one", mod, "Times10", ["data"], ["one"]) + _py("two", mod, "Times10", ["one"], ["two"])
            + _py("three", mod, "Times10", ["two"], ["three"]))
    net = _net(text)
    assert net.blob_shapes["three"] == (10, 9, 8)
    x = torch.full((10, 9, 8), 8.0)
    out = net(data=x)["three"]
    assert torch.equal(out, torch.full((10, 9, 8), 8000.0))
    out.backward(torch.full((10, 9, 8), 7.0))
    assert torch.equal(net.blobs["data"].grad, torch.full((10, 9, 8), 7000.0))


def test_a_parameter_blob_is_learned_saved_and_loaded(layer_dir, tmp_path):
    _, mod = layer_dir
    text = ('name: "py" force_backward: true input: "data" input_shape { dim: 4 dim: 3 }\n'
            + _py("scaled", mod, "Scaled", ["data"], ["y"]))
    net = _net(text)
    assert [n for n, _ in net.named_parameters()] == ["layers.scaled.blob0"]
    x = torch.arange(12.0).reshape(4, 3)
    y = net(data=x)["y"]
    assert torch.equal(y, 0.5 * x)
    y.backward(torch.ones(4, 3))
    assert float(net.layers["scaled"].blob0.grad) == float(x.sum())  # the diff its backward wrote
    with torch.no_grad():
        net.layers["scaled"].blob0.fill_(-2.0)
    net.save(str(tmp_path / "m.caffemodel"))
    model = pb.NetParameter()
    model.ParseFromString((tmp_path / "m.caffemodel").read_bytes())
    (saved,) = [lp for lp in model.layer if lp.name == "scaled"]
    assert saved.type == "Python" and list(saved.blobs[0].data) == [-2.0]
    other = _net(text)
    other.copy_from(str(tmp_path / "m.caffemodel"))
    assert torch.equal(other(data=x)["y"], -2.0 * x)  # the loaded value reaches the layer's own blob


def test_phase_and_param_str(layer_dir):
    _, mod = layer_dir
    text = 'name: "py"\n' + _py("ph", mod, "PhasePlus", [], ["p"], 'python_param { param_str: "3" }')
    text = text.replace(' } python_param { param_str: "3" }', ' param_str: "3" }')
    assert float(_net(text, pb.TRAIN)()["p"]) == 3.0  # caffe.TRAIN is 0
    assert float(_net(text, pb.TEST)()["p"]) == 4.0


def test_python_euclidean_loss_equals_the_built_in_layer_and_trains(layer_dir, tmp_path):
    """Caffe's linreg example: a Python Euclidean loss (loss_weight 1) against EuclideanLoss, then a solver run."""
    _, mod = layer_dir
    head = textwrap.dedent('''\
        name: "linreg"
        layer { type: "DummyData" name: "x" top: "x" dummy_data_param { shape { dim: 10 dim: 3 dim: 2 }
                data_filler { type: "gaussian" } } }
        layer { type: "DummyData" name: "y" top: "y" dummy_data_param { shape { dim: 10 dim: 3 dim: 2 }
                data_filler { type: "gaussian" } } }
        layer { type: "InnerProduct" name: "ipx" bottom: "x" top: "ipx"
                inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
        layer { type: "InnerProduct" name: "ipy" bottom: "y" top: "ipy"
                inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
        ''')
    python_loss = head + _py("loss", mod, "Euclidean", ["ipx", "ipy"], ["loss"], "loss_weight: 1")
    builtin_loss = head + 'layer { type: "EuclideanLoss" name: "loss" bottom: "ipx" bottom: "ipy" top: "loss" }\n'
    a, b = _net(python_loss, seed=5), _net(builtin_loss, seed=5)
    b.load_state_dict(a.state_dict())
    la, lb = a()["loss"], b()["loss"]
    torch.testing.assert_close(la.reshape(()), lb, rtol=1e-6, atol=0)
    a.loss.backward()
    b.loss.backward()
    for name in ("ipx", "ipy"):
        torch.testing.assert_close(a.layers[name].weight.grad, b.layers[name].weight.grad, rtol=1e-5, atol=1e-7)

    # The same training with either loss: the same weights (the solver sees the same diffs).
    finals = []
    for i, text in enumerate((python_loss, builtin_loss)):
        (tmp_path / f"linreg{i}.prototxt").write_text(text)
        (tmp_path / f"solver{i}.prototxt").write_text(
            f'net: "linreg{i}.prototxt" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 max_iter: 30 display: 0 '
            f'snapshot: 0 snapshot_after_train: false random_seed: 3\n')
        solver = Solver(str(tmp_path / f"solver{i}.prototxt"), device="cpu")
        solver.net.forward()
        first = float(solver.net.loss.detach())
        solver.solve()
        solver.net.forward()
        assert float(solver.net.loss.detach()) < 0.5 * first
        finals.append({k: v.detach().clone() for k, v in solver.net.state_dict().items()})
    for k, v in finals[1].items():
        torch.testing.assert_close(finals[0][k], v, rtol=1e-4, atol=1e-6)


def test_errors_name_the_layer_and_what_was_expected(layer_dir, tmp_path, monkeypatch):
    _, mod = layer_dir
    head = 'name: "py" input: "data" input_shape { dim: 2 dim: 3 }\n'
    with pytest.raises(NetcompressError, match=r"layer 'l'.*'no_such_module' cannot be imported.*PYTHONPATH"):
        _net(head + _py("l", "no_such_module", "X", ["data"], ["y"]))
    with pytest.raises(NetcompressError, match=rf"layer 'l'.*module '{mod}' .* has no class 'Nope'"):
        _net(head + _py("l", mod, "Nope", ["data"], ["y"]))
    with pytest.raises(NetcompressError, match=r"has no reshape\(\) method"):
        _net(head + _py("l", mod, "NotALayer", ["data"], ["y"]))
    with pytest.raises(NetcompressError, match="needs both module and layer"):
        _net(head + 'layer { type: "Python" name: "l" bottom: "data" top: "y" python_param { module: "m" } }')
    with pytest.raises(NetcompressError, match=rf"layer 'l'.*{mod}.Euclidean setup raised Exception: Need two"):
        _net(head + _py("l", mod, "Euclidean", ["data"], ["y"]))
    net = _net(head + _py("l", mod, "Broken", ["data"], ["y"]))
    with pytest.raises(NetcompressError, match=rf"layer 'l'.*{mod}.Broken forward raised ValueError: no forward"):
        net(data=torch.zeros(2, 3))
    (tmp_path / "needs_extension.py").write_text("import caffe._caffe\n")  # pycaffe's C++ module itself
    with pytest.raises(NetcompressError, match=r"'needs_extension' cannot be imported.*stands in for caffe.*not "
                                               r"this"):
        _net(head + _py("l", "needs_extension", "X", ["data"], ["y"]))
    sys.modules.pop("needs_extension", None)
    (tmp_path / "uses_detector.py").write_text("import caffe.detector\nimport caffe.classifier\n"
                                               "X = caffe.detector.Detector\n")
    import importlib

    from netcompress import pycaffe
    pycaffe.install_as_caffe()  # (done where a Python layer is built; no-op when caffe is imported already)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert importlib.import_module("uses_detector").X is pycaffe.Detector
    sys.modules.pop("uses_detector", None)


def test_the_commands_import_layer_modules_from_the_current_directory(layer_dir, capsys):
    from netcompress.cli import main as cli_main

    folder, mod = layer_dir
    (folder / "net.prototxt").write_text(
        'name: "py" input: "data" input_shape { dim: 2 dim: 3 }\n' + _py("ten", mod, "Times10", ["data"], ["y"]))
    assert cli_main(["time", "--model", "net.prototxt", "--iterations", "2"]) == 0
    assert "ten\tforward:" in capsys.readouterr().err


def test_time_gives_the_iteration_hint_only_for_nets_with_per_forward_steps(layer_dir, capsys, monkeypatch):
    from netcompress.cli import main as cli_main
    from netcompress.layers.python import PythonLayer

    folder, mod = layer_dir
    (folder / "net.prototxt").write_text(
        'name: "py" input: "data" input_shape { dim: 2 dim: 3 }\n' + _py("l", mod, "Broken", ["data"], ["y"]))
    assert cli_main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{mod}.Broken forward raised ValueError: no forward today" in err
    assert "solver iteration" not in err  # the layer's own error: no hint about DNS/INQ steps
    monkeypatch.setattr(PythonLayer, "set_iteration", lambda self, iteration: None)  # a layer with steps
    assert cli_main(["time", "--model", "net.prototxt", "--iterations", "1"]) == 1
    assert "[time runs a TRAIN net's per-forward steps at solver iteration 0" in capsys.readouterr().err


def test_the_layers_blobs_are_the_nets_parameters(layer_dir, tmp_path):
    """`self.blobs[i].data` is the parameter's memory, as in Caffe: a script's write there is the weight that is
    saved, and copy_from / share_with show in it (pycaffe's own test_parameter does this)."""
    from netcompress import pycaffe as caffe

    _, mod = layer_dir
    (tmp_path / "net.prototxt").write_text('name: "p" input: "data" input_shape { dim: 2 dim: 3 }\n'
                                           + _py("scaled", mod, "Scaled", ["data"], ["y"]))
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    layer = net.layers[list(net._layer_names).index("scaled")]
    assert layer.blobs[0].data[0] == np.float32(0.5)
    layer.blobs[0].data[0] = 2.0
    net.blobs["data"].data[...] = 1.0
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, np.full((2, 3), 2.0, np.float32))
    assert net.params["scaled"][0].data[0] == 2.0
    net.save(str(tmp_path / "w.caffemodel"))
    layer.blobs[0].data[0] = -1.0
    net.copy_from(str(tmp_path / "w.caffemodel"))
    assert layer.blobs[0].data[0] == 2.0
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    other.share_with(net)
    assert other.layers[list(other._layer_names).index("scaled")].blobs[0].data[0] == 2.0


def test_an_error_keeps_the_layers_own_type(layer_dir):
    """caffe.Net around a layer whose setup raises RuntimeError raises a RuntimeError (pycaffe's test_exception),
    which is also the NetDefinitionError naming the layer; a KeyError (its own str) stays a NetDefinitionError."""
    _, mod = layer_dir
    head = 'name: "py" input: "data" input_shape { dim: 2 dim: 3 }\n'
    with pytest.raises(RuntimeError) as info:
        _net(head + _py("l", mod, "RaisesRuntime", ["data"], ["y"]))
    assert isinstance(info.value, NetcompressError)
    assert f"layer 'l' (type Python): {mod}.RaisesRuntime setup raised RuntimeError: bad setup" in str(info.value)
    with pytest.raises(NetcompressError) as info:
        _net(head + _py("l", mod, "RaisesKey", ["data"], ["y"]))
    assert not isinstance(info.value, KeyError) and "raised KeyError" in str(info.value)


@pytest.mark.parametrize("device, dtype", [("cpu", torch.bfloat16),
                                           pytest.param("cuda", torch.float32, marks=pytest.mark.cuda)])
def test_blobs_of_a_parameter_held_elsewhere_sync_as_caffes_synced_memory(layer_dir, tmp_path, device, dtype):
    """Where the parameter is not a CPU float32/64 tensor (a GPU's, a bfloat16 net's), `self.blobs[i].data` is a
    host copy: a write there reaches the parameter before the next forward and a save; a change of the
    parameter (an update, copy_from) shows at the next read."""
    _, mod = layer_dir
    net = _net('name: "p" input: "data" input_shape { dim: 2 dim: 3 }\n' + _py("s", mod, "Scaled", ["data"], ["y"]),
               dtype=dtype, device=device)
    layer = net.layer("s")
    blob = layer.impl.blobs[0]
    assert blob.data[0] == 0.5 and layer.blob0.dtype == dtype and layer.blob0.device.type == device
    blob.data[0] = 2.0                                   # a script's write into the host copy
    y = net(data=torch.ones(2, 3, dtype=dtype, device=device))["y"]
    assert torch.equal(y.cpu(), torch.full((2, 3), 2.0, dtype=dtype)) and float(layer.blob0.detach()[0]) == 2.0
    with torch.no_grad():
        layer.blob0.add_(1.0)                            # a solver's in-place update
    assert blob.data[0] == 3.0
    blob.data[0] = 4.0
    net.save(str(tmp_path / "w.caffemodel"))             # a save pushes the write first
    from netcompress import io as ncio
    saved = [lp for lp in ncio.read_caffemodel(str(tmp_path / "w.caffemodel")).layer if lp.name == "s"][0]
    assert list(saved.blobs[0].data) == [4.0]
    blob.data[0] = 5.0
    net.copy_from(str(tmp_path / "w.caffemodel"))       # the parameter changed after the write: its value wins
    assert blob.data[0] == 4.0
    net(data=torch.ones(2, 3, dtype=dtype, device=device))
    assert float(layer.blob0.detach()[0]) == 4.0


@pytest.mark.parametrize("what,error", [
    ("blob in forward", r"Misbehaves reshape/forward reshaped self.blobs\[0\] from \[3\] to \[7\]: a Python layer's "
                        r"learnable blobs keep the shape set-up gave them"),
    ("blob added", r"Misbehaves reshape/forward left self.blobs with 2 blobs, set-up gave it 1"),
    ("blob replaced", r"Misbehaves reshape/forward replaced self.blobs\[0\] with a int"),
    ("blob in backward", r"Misbehaves backward reshaped self.blobs\[0\] from \[3\] to \[2\]"),
    ("bottom in backward", r"Misbehaves: bottom\[0\] came in as \[2, 3\] and was reshaped to \[5\] by the time "
                           r"backward returned"),
    ("top", r"layer 'loss' \(type EuclideanLoss\): cannot run on bottoms of other shapes than it was set up for "
            r"\('y' is \[3, 7\], was \[2, 3\]\)"),
])
def test_a_layer_that_reshapes_what_it_may_not_is_named(layer_dir, what, error):
    """Each was an unexpected error from torch (a reshape or a gradient of the wrong size, or an error inside the
    layer below), found by a fuzz of Python layers; in Caffe a reshaped parameter overruns the solver's history."""
    _, mod = layer_dir
    text = ('name: "py" input: "data" input_shape { dim: 2 dim: 3 } input: "t" input_shape { dim: 2 dim: 3 }\n'
            + _py("l", mod, "Misbehaves", ["data"], ["y"], f'python_param {{ param_str: "{what}" }}')
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = _net(text.replace(f'layer: "Misbehaves" }} python_param {{ param_str: "{what}" }}',
                            f'layer: "Misbehaves" param_str: "{what}" }}'))
    with pytest.raises(NetcompressError, match=error):
        net(data=torch.rand(2, 3, requires_grad=True), t=torch.rand(2, 3))
        net.loss.backward()


def test_blobs_that_setup_replaced_with_no_list_are_named(layer_dir):
    _, mod = layer_dir
    with pytest.raises(NetcompressError, match=rf"{mod}.DropsBlobs.blobs is a NoneType after setup; a Python "
                                               r"layer's blobs is the list caffe.Layer gives it"):
        _net('name: "py" input: "data" input_shape { dim: 2 dim: 3 }\n'
             + _py("l", mod, "DropsBlobs", ["data"], ["y"]))


def test_a_top_reshaped_in_forward_is_named_through_pycaffe_too(layer_dir):
    """pycaffe's Net runs the layers one by one (its own path): the layer below is named as in the native net."""
    from netcompress import pycaffe

    folder, mod = layer_dir
    (folder / "net.prototxt").write_text(
        'name: "py" input: "data" input_shape { dim: 2 dim: 3 } input: "t" input_shape { dim: 2 dim: 3 }\n'
        + _py("l", mod, "Misbehaves", ["data"], ["y"]).replace('layer: "Misbehaves"',
                                                                'layer: "Misbehaves" param_str: "top"')
        + 'layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }\n')
    net = pycaffe.Net(str(folder / "net.prototxt"), pycaffe.TRAIN)
    with pytest.raises(NetcompressError, match=r"layer 'loss' \(type EuclideanLoss\): cannot run on bottoms of other "
                                               r"shapes than it was set up for \('y' is \[3, 7\], was \[2, 3\]\)"):
        net.forward()


def test_a_test_output_that_changes_size_between_test_iterations_is_named(layer_dir, tmp_path):
    """Caffe averages each output value over the test iterations (its vector sized at the first)."""
    _, mod = layer_dir
    net = (tmp_path / "net.prototxt")
    net.write_text('name: "grow"\nlayer { name: "d" type: "DummyData" top: "x" top: "t" dummy_data_param { '
                   'shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }\n'
                   + _py("g", mod, "Grows", ["x"], ["grown"])
                   + 'layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "loss" }\n')
    sp = pb.SolverParameter(net=str(net), base_lr=0.1, lr_policy="fixed", max_iter=1, test_iter=[3],
                            test_interval=1, snapshot_prefix=str(tmp_path / "s"))
    solver = Solver(sp)
    with pytest.raises(NetcompressError, match=r"test net #0: output 'grown' holds 3 values at test iteration 1, 2 "
                                               r"at the first: Caffe averages each value"):
        solver.test(0)
