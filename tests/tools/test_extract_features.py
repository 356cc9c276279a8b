"""extract_features (Caffe's tool): a trained net's blobs over its data layers into new LMDBs / LevelDBs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from netcompress import cli
from netcompress.net import Net
from netcompress.proto import caffe_pb2 as pb
from netcompress.tools.features import extract_features

NET = """
name: "feat"
layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 }}
         data_param {{ source: "{source}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
         inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.1 }}
                                bias_filler {{ type: "constant" value: 0.5 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip" top: "ip" }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
         convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
"""


@pytest.fixture
def trained(tmp_path, lmdb_writer):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (10, 1, 6, 6)).astype(np.uint8)
    labels = rng.randint(0, 3, 10)
    lmdb_writer(tmp_path / "src_lmdb", images, labels)
    proto = tmp_path / "feat.prototxt"
    proto.write_text(NET.format(source=tmp_path / "src_lmdb"))
    model = tmp_path / "feat.caffemodel"
    Net(str(proto), phase=pb.TRAIN, seed=3, verbose=False).save(str(model))
    return tmp_path, images, proto, model


@pytest.mark.parametrize("db_type", ["lmdb", "leveldb"])
def test_extract_features_writes_caffes_records(trained, db_type, datum_records):
    if db_type == "leveldb":
        pytest.importorskip("plyvel", reason="LevelDB support needs the optional plyvel package")
    root, images, proto, model = trained
    ip_db, conv_db = root / f"ip_{db_type}", root / f"conv_{db_type}"
    # Caffe's positional arguments; 3 batches of 4 over 10 records: the data layer wraps around
    assert cli.main(["extract_features", str(model), str(proto), "ip,conv", f"{ip_db},{conv_db}", "3", db_type,
                     "CPU"]) == 0
    net = Net(str(proto), phase=pb.TEST, weights=str(model), verbose=False)
    x = torch.from_numpy(images[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]].astype(np.float32) * np.float32(0.00390625))
    with torch.no_grad():
        w, b = net.layer("ip").weight, net.layer("ip").bias
        want_ip = torch.relu(x.reshape(12, -1) @ w.T + b).numpy()
        want_conv = torch.nn.functional.conv2d(x, net.layer("conv").weight, net.layer("conv").bias).numpy()
    ip_rows, conv_rows = datum_records(ip_db), datum_records(conv_db)
    assert [k for k, _ in ip_rows] == [b"%010d" % i for i in range(12)] == [k for k, _ in conv_rows]
    d = ip_rows[5][1]
    assert (d.channels, d.height, d.width, d.label, len(d.data), d.encoded) == (5, 1, 1, 0, 0, False)
    np.testing.assert_allclose([r.float_data for _, r in ip_rows], want_ip, rtol=1e-5, atol=1e-6)
    d = conv_rows[0][1]
    assert (d.channels, d.height, d.width) == (2, 4, 4)
    np.testing.assert_allclose([r.float_data for _, r in conv_rows], want_conv.reshape(12, -1), rtol=1e-5, atol=1e-6)


def test_extract_features_refuses_bad_arguments_before_writing(trained, capsys, monkeypatch):
    root, _, proto, model = trained
    out = str(root / "f")
    run = lambda *a: cli.main(["extract_features", str(model), str(proto), *a])  # noqa: E731
    assert run("ip,conv", out, "1", "lmdb") == 1
    assert "the number of blob names and dataset names must be equal" in capsys.readouterr().err
    assert run("fc7", out, "1", "lmdb") == 1
    assert f"Unknown feature blob name fc7 in the network {proto} (blobs: data, label, ip, conv)" in \
        capsys.readouterr().err
    assert run("ip", out, "1", "rocksdb") == 1
    assert "unknown database backend 'rocksdb' (expected lmdb or leveldb)" in capsys.readouterr().err
    assert run("ip", out, "-1", "lmdb") == 1
    assert "num_mini_batches must be at least 0, got -1" in capsys.readouterr().err
    assert run("ip", out, str(2 ** 31), "lmdb") == 1  # (Caffe's int argument; it ran for ever)
    assert "num_mini_batches takes at most 2147483647 (Caffe's int flag), got 2147483648" in capsys.readouterr().err
    assert run("ip,conv", f"{out},{out}", "1", "lmdb") == 1
    assert "a dataset is named twice" in capsys.readouterr().err
    assert run("ip", "", "1", "lmdb") == 1  # (its temporary folder went beside the current one; the rename failed)
    assert "an empty name in the blob names 'ip' or the dataset names ''" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run("ip", out, "1", "lmdb", "GPU", "0") == 1
        assert "GPU mode, but no CUDA device is available here; give CPU" in capsys.readouterr().err
    import netcompress.net as ncnet  # a net whose blobs cannot fit is refused before its first forward
    monkeypatch.setattr(ncnet, "device_memory", lambda device: 64)
    assert run("ip", out, "1", "lmdb") == 1
    assert f"{proto}: the TEST net needs 0.0 GiB for its blobs and weights" in capsys.readouterr().err
    monkeypatch.undo()
    os.mkdir(out)
    assert run("ip", out, "1", "lmdb") == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(os.listdir(root)) == sorted(["src_lmdb", "feat.prototxt", "feat.caffemodel", "f"])


def test_a_failure_midway_leaves_no_database(trained, monkeypatch):
    root, _, proto, model = trained
    calls = {"n": 0}
    real = Net.forward

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Net, "forward", failing)
    with pytest.raises(KeyboardInterrupt):
        extract_features(str(model), str(proto), ["ip", "conv"], [str(root / "a"), str(root / "b")], 3, "lmdb")
    assert not [p for p in os.listdir(root) if p.startswith((".a", ".b", "a", "b"))]


def test_a_blob_of_more_than_four_axes_is_refused(tmp_path):
    from netcompress.tools._common import ToolError
    from netcompress.tools.features import legacy_shape

    assert legacy_shape((7, 3), "blob 'x'") == (7, 3, 1, 1)
    assert legacy_shape((), "blob 'x'") == (1, 1, 1, 1)
    with pytest.raises(ToolError, match=r"blob 'x' has shape \[1, 2, 3, 4, 5\]: .* at most 4 axes"):
        legacy_shape((1, 2, 3, 4, 5), "blob 'x'")
