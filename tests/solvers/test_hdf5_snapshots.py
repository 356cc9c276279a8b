"""Caffe's HDF5 snapshots (`snapshot_format: HDF5`) and HDF5 weights: Net::ToHDF5's layout, the solver state
SnapshotSolverStateToHDF5 writes, resume from a .solverstate.h5, and `--weights` from a .caffemodel.h5."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from netcompress import io as ncio
from netcompress.cli import main as cli_main
from netcompress.errors import FileError, NetcompressError, WeightLoadError
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.solvers import Solver
from netcompress.solvers.solver import read_hdf5_state

from small_net import solver_param, workdir  # noqa: F401 (workdir: a fixture)

HDF5 = pb.SolverParameter.HDF5


def _weights(path) -> dict[str, list[np.ndarray]]:
    net = ncio.read_caffemodel(str(path))
    return {lp.name: [ncio.blob_to_array(b) for b in lp.blobs] for lp in net.layer if len(lp.blobs)}


@pytest.mark.parametrize("variant", ["plain", "dns"])
def test_hdf5_snapshots_are_caffes_layout_and_resume_bit_identically(workdir, variant):
    full = Solver(solver_param(workdir, variant, type="Adam", snapshot_format=HDF5), verbose=False)
    full.solve()
    model, state = workdir / f"run_{variant}_iter_12.caffemodel.h5", workdir / f"run_{variant}_iter_12.solverstate.h5"
    assert model.is_file() and state.is_file() and not (workdir / f"run_{variant}_iter_12.caffemodel").exists()
    with h5py.File(model, "r") as f:
        assert list(f) == ["data"]
        # a group per layer of the TEST-free TRAIN net (Caffe's order is kept in the file by name)
        assert sorted(f["data"]) == sorted(["data", "conv1", "relu1", "pool1", "drop", "ip1", "loss"])
        assert list(f["data/conv1"]) == (["0", "1"] if variant == "plain" else ["0", "1", "2", "3"])
        assert f["data/conv1/0"].dtype == np.float32 and f["data/conv1/0"].shape == (6, 1, 3, 3)
        assert len(f["data/relu1"]) == 0
        np.testing.assert_array_equal(f["data/ip1/0"][()], full.net.layer("ip1").weight.detach().numpy())
    with h5py.File(state, "r") as f:
        assert f["iter"].dtype == np.int32 and f["iter"][()].tolist() == [12]
        assert f["current_step"][()].tolist() == [0]
        tid = f["learned_net"].id.get_type()
        assert isinstance(tid, h5py.h5t.TypeStringID) and tid.get_strpad() == h5py.h5t.STR_NULLTERM
        # H5LTmake_dataset_string's type: the string's bytes and the NUL that ends it
        assert tid.get_size() == len(str(model)) + 1 and f["learned_net"][()] == str(model).encode()
        # Adam: m and v of every parameter blob (4, and the DNS masks too), in Caffe's history_ order
        assert len(f["history"]) == 2 * len(full.history) == (8 if variant == "plain" else 16)
    s = read_hdf5_state(str(state))
    assert (s.iter, s.learned_net, s.current_step, len(s.history)) == (12, str(model), 0, 2 * len(full.history))
    # resume from the iteration-5 .solverstate.h5 (the .h5 suffix picks the format, as in Caffe)
    sp = solver_param(workdir, variant, type="Adam", snapshot_format=HDF5,
                      snapshot_prefix=str(workdir / f"resumed_{variant}"))
    resumed = Solver(sp, verbose=False)
    resumed.solve(resume_file=str(workdir / f"run_{variant}_iter_5.solverstate.h5"))
    assert resumed.iter == 12
    a, b = _weights(model), _weights(workdir / f"resumed_{variant}_iter_12.caffemodel.h5")
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)


def test_weights_from_a_caffemodel_h5_equal_the_binary_ones(workdir, tmp_path):
    sp = solver_param(workdir, "plain", max_iter=5)
    solver = Solver(sp, verbose=False)
    solver.solve()
    solver.net.save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    binary = workdir / "run_plain_iter_5.caffemodel"
    a = Net(sp.net, phase=pb.TEST, weights=str(binary), verbose=False)
    b = Net(sp.net, phase=pb.TEST, weights=str(tmp_path / "w.caffemodel.h5"), verbose=False)
    for (name, la), (_, lb) in zip(a.named_layers(), b.named_layers()):
        for x, y in zip(la.blobs(), lb.blobs()):
            assert torch.equal(x, y), name
    # through the command line: `test`, and `train --weights` with a list mixing both formats
    assert cli_main(["test", "--model", sp.net, "--weights", str(tmp_path / "w.caffemodel.h5"), "--iterations", "1"]) == 0
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(text_format.MessageToString(solver_param(workdir, "plain", max_iter=1, snapshot=0,
                                                                    prefix="ft")))
    assert cli_main(["train", "--solver", str(solver_file), "--weights",
                     f"{tmp_path / 'w.caffemodel.h5'},{binary}"]) == 0


SIAMESE = """
layer { name: "x" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "fa" type: "InnerProduct" bottom: "a" top: "fa"
        param { name: "w" } param { name: "bias" } inner_product_param { num_output: 4 } }
layer { name: "fb" type: "InnerProduct" bottom: "b" top: "fb"
        param { name: "w" } param { lr_mult: 2 } inner_product_param { num_output: 4 } }
layer { name: "sum" type: "Eltwise" bottom: "fa" bottom: "fb" top: "s" }
layer { name: "probe" type: "Power" bottom: "fa" top: "p" }
"""


def test_shared_parameters_are_written_once_and_skipped_when_read(tmp_path):
    param = text_format.Parse(SIAMESE, pb.NetParameter())
    net = Net(param, phase=pb.TEST, seed=1, verbose=False)
    path = str(tmp_path / "s.caffemodel.h5")
    net.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert list(f["data/fa"]) == ["0", "1"]
        assert list(f["data/fb"]) == ["1"]  # its weight is fa's: Caffe writes it once
        assert "fa_fa_0_split" in f["data"]  # the Split layer Caffe inserts (fa feeds sum and probe)
    other = Net(param, phase=pb.TEST, seed=2, verbose=False)
    other.copy_from(path)
    for name in ("fa", "fb"):
        for x, y in zip(net.layer(name).blobs(), other.layer(name).blobs()):
            assert torch.equal(x, y)
    # a blob a layer owns missing from the file is an error naming the layer
    with h5py.File(path, "a") as f:
        del f["data/fb/1"]
        f["data/fb"].create_dataset("2", data=np.zeros(1, np.float32))  # keeps a blob count of 3 > 2 too
    with pytest.raises(WeightLoadError, match="Incompatible number of blobs for layer 'fb'"):
        other.copy_from(path)


def test_a_caffe_written_hdf5_state_reads(tmp_path):
    """A solver state laid out as Caffe's H5LT calls write it (int datasets of one value, a scalar NUL-terminated
    string), read back; and an HDF5 file that is not one names itself."""
    path = tmp_path / "c_iter_7.solverstate.h5"
    with h5py.File(path, "w") as f:
        f["iter"] = np.array([7], np.int32)
        f["current_step"] = np.array([2], np.int32)
        f["learned_net"] = np.bytes_(b"c_iter_7.caffemodel.h5\0")
        g = f.create_group("history")
        g["0"] = np.ones((2, 3), np.float32)
    s = read_hdf5_state(str(path))
    assert (s.iter, s.current_step, s.learned_net) == (7, 2, "c_iter_7.caffemodel.h5")
    assert ncio.blob_to_array(s.history[0]).tolist() == [[1, 1, 1], [1, 1, 1]]
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["other"] = np.zeros(1)
    with pytest.raises(Exception, match=r"x.h5: not Caffe's HDF5 solver state \(no iter, current_step, history\)"):
        read_hdf5_state(str(tmp_path / "x.h5"))
    with pytest.raises(Exception, match=r"x.h5: an HDF5 file without Caffe's /data group"):
        ncio.read_caffemodel(str(tmp_path / "x.h5"))
    # each in the other's place says what it is (and where it goes)
    with pytest.raises(Exception, match=r"c_iter_7.solverstate.h5: an HDF5 file without Caffe's /data group \(not a "
                                        r"\.caffemodel\.h5\); it is an HDF5 solver state: resume from it with "
                                        r"Solver.restore, or give its model to copy_from$"):
        ncio.read_caffemodel(str(path))
    with ncio.advice_for("command line"), pytest.raises(Exception, match=r"solver state: resume from it with "
                                                                         r"--snapshot, or give its model with --weights$"):
        ncio.read_caffemodel(str(path))
    with h5py.File(tmp_path / "w.caffemodel.h5", "w") as f:
        f.create_group("data").create_group("ip")["0"] = np.zeros(3, np.float32)
    with pytest.raises(Exception, match=r"w.caffemodel.h5: not Caffe's HDF5 solver state \(no iter, current_step, "
                                        r"history\); it is an HDF5 caffemodel \(it holds /data\): give weights with "
                                        r"--weights"):
        read_hdf5_state(str(tmp_path / "w.caffemodel.h5"))


def test_snapshot_diff_writes_every_blobs_diff_under_diff(workdir):
    """snapshot_diff with HDF5: Net::ToHDF5's /diff group holds every blob's diff (shared or not), /data the values."""
    solver = Solver(solver_param(workdir, "plain", max_iter=2, snapshot_format=HDF5, snapshot_diff=True),
                    verbose=False)
    solver.solve()
    with h5py.File(workdir / "run_plain_iter_2.caffemodel.h5", "r") as f:
        assert sorted(f) == ["data", "diff"] and sorted(f["diff"]) == sorted(f["data"])
        grad = solver.net.layer("ip1").weight.grad
        assert grad is not None and grad.abs().sum() > 0
        np.testing.assert_array_equal(f["diff/ip1/0"][()], grad.numpy())
        np.testing.assert_array_equal(f["data/ip1/0"][()], solver.net.layer("ip1").weight.detach().numpy())
        assert len(f["diff/relu1"]) == 0


def test_a_layer_name_with_a_slash_is_refused_for_hdf5_and_earlier_files_load(workdir, tmp_path):
    """HDF5 reads a '/' in a group's name as a path: a layer named 'conv/1' (GoogLeNet's 'conv1/7x7_s2') was
    written as nested groups, which the next load did not find (the layer kept its fillers, with a warning):
    resuming lost its weights. Caffe's own writer fails on such a name. Now HDF5 snapshots of such a net are
    refused at set-up and saving refuses it, nothing written; binary snapshots hold it; the nested groups that
    earlier versions wrote load under the layer's name."""
    sp = solver_param(workdir, "plain", snapshot_format=HDF5)
    netfile = sp.net
    text = open(netfile).read().replace('name: "conv1"', 'name: "conv/1"')
    assert 'name: "conv/1"' in text
    open(netfile, "w").write(text)
    with pytest.raises(NetcompressError, match=r"snapshot_format: HDF5: layer 'conv/1': Caffe's HDF5 weights cannot "
                                               r"hold a layer name with '/' \(HDF5 reads it as a path"):
        Solver(sp, verbose=False)
    sp.snapshot_format = pb.SolverParameter.BINARYPROTO
    Solver(sp, verbose=False).solve()  # binary snapshots hold any name
    binary = workdir / "run_plain_iter_12.caffemodel"
    net = Net(netfile, phase=pb.TEST, verbose=False)
    net.copy_from(str(binary))
    out = tmp_path / "w.caffemodel.h5"
    with pytest.raises(FileError, match="layer 'conv/1': Caffe's HDF5 weights cannot hold"):
        net.save_hdf5(str(out))
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
    # A file of the earlier writer: the layer's blobs under /data/conv/1
    layers = [(name, [t.detach().numpy() for t in layer.blobs()]) for name, layer in net.named_layers()]
    with h5py.File(out, "w") as f:
        for name, blobs in layers:
            g = f.create_group(f"data/{name}")  # (creates /data/conv on the way)
            for j, a in enumerate(blobs):
                g.create_dataset(str(j), data=a)
    assert [l.name for l in ncio.read_hdf5_weights(str(out)).layer if len(l.blobs)] == \
        sorted(name for name, blobs in layers if blobs)
    other = Net(netfile, phase=pb.TEST, seed=9, verbose=False)
    other.copy_from(str(out), strict=True)  # (strict: every learnable layer filled)
    for x, y in zip(net.layer("conv/1").blobs(), other.layer("conv/1").blobs()):
        assert torch.equal(x, y)
