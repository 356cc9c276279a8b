"""caffe.Detector and netcompress detect (Caffe's python/caffe/detector.py and python/detect.py)."""
from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from netcompress import io as ncio
from netcompress import pycaffe as caffe
from netcompress.net import Net
from netcompress.pycaffe import io as caffe_io
from netcompress.tools.detect import main

SCALE = ["--raw_scale", "255", "--input_scale", "0.00390625"]

SQUARE_NET = """
name: "square"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.01 } } }
"""


@pytest.fixture
def square(tmp_path):
    (tmp_path / "sq.prototxt").write_text(SQUARE_NET)
    Net(str(tmp_path / "sq.prototxt"), seed=2, verbose=False).save(str(tmp_path / "sq.caffemodel"))
    return str(tmp_path / "sq.prototxt"), str(tmp_path / "sq.caffemodel")


def test_context_crop_arithmetic(square):
    """Caffe's crop by hand: 16-pixel input, context_pad 4, so a window grows by 16 / (16 - 8) = 2."""
    mean = np.array([10.0, 20.0, 30.0])
    det = caffe.Detector(*square, mean=mean, raw_scale=255, channel_swap=(2, 1, 0), context_pad=4)
    im = np.random.default_rng(1).random((40, 40, 3)).astype(np.float32)
    # window rows 10..20: half 5.5 (inclusive), centre 15.5, box 15.5 -/+ 11 = 4.5, 26.5, rounded half to even
    # to 4, 26: the context crop is im[4:26] (its end left out), 22 pixels warped to 16, no padding
    np.testing.assert_allclose(det.crop(im, (10, 10, 20, 20)), caffe_io.resize_image(im[4:26, 4:26], (16, 16)),
                               rtol=1e-6)
    # a corner window: box (-4, -4, 14, 14), 19 pixels for 16, so 4 * 16 / 19 = 3.37 -> 3 rows and columns of
    # padding, and the clipped 15 pixels warp to round(15 * 16 / 19) = 13; the padding is the mean in the raw
    # image's space (BGR mean back to RGB, divided by the raw scale)
    crop = det.crop(im, (0, 0, 8, 8))
    np.testing.assert_allclose(crop[3:, 3:], caffe_io.resize_image(im[0:14, 0:14], (13, 13)), rtol=1e-6)
    np.testing.assert_allclose(crop[0, 0], np.array([30.0, 20.0, 10.0]) / 255, rtol=1e-6)
    np.testing.assert_allclose(crop[:3, 5], np.tile(np.array([30.0, 20.0, 10.0]) / 255, (3, 1)), rtol=1e-6)
    # no context: the window as it is, its end row and column left out
    det.configure_crop(None)
    np.testing.assert_array_equal(det.crop(im, (5, 6, 9, 13)), im[5:9, 6:13])
    with pytest.raises(ValueError, match=r"context_pad 8 leaves no window in the net's 16-pixel input"):
        det.configure_crop(8)


@pytest.fixture
def scene(fixture_workdir, caffe_split, tmp_path, request):
    """Two 56 x 56 images of four test digits each, Caffe's LeNet and its deploy net."""
    x = caffe_split["test_x"]
    paths = []
    for k in range(2):
        canvas = np.zeros((56, 56), np.uint8)
        for q in range(4):
            r, c = divmod(q, 2)
            canvas[28 * r:28 * r + 28, 28 * c:28 * c + 28] = x[4 * k + q, 0]
        paths.append(tmp_path / f"scene{k}.png")
        Image.fromarray(canvas).save(paths[-1])
    deploy = request.config.rootpath / "examples/mnist/lenet.prototxt"
    return paths, str(deploy), str(fixture_workdir / "lenet" / "lenet_iter_5000.caffemodel"), x[:8]


def test_detect_windows_on_digits_csv_and_h5(scene, tmp_path, capsys):
    paths, deploy, model, digits = scene
    windows = tmp_path / "windows.csv"
    rows = ["xmin,filename,ymin,ymax,xmax,note"]  # any column order; other columns ignored
    for k, p in enumerate(paths):
        for q in range(4):
            r, c = divmod(q, 2)
            rows.append(f"{28 * c},{p},{28 * r},{28 * r + 28},{28 * c + 28},q{q}")
    windows.write_text("\n".join(rows) + "\n")
    out = tmp_path / "det.csv"
    assert main([str(windows), str(out), "--model_def", deploy, "--pretrained_model", model, "--context_pad", "0",
                 *SCALE]) == 0
    assert "Processed 8 windows" in capsys.readouterr().out
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["filename", "ymin", "xmin", "ymax", "xmax"] + [f"class{k}" for k in range(10)]
    assert [r[0] for r in table[1:]] == [str(paths[0])] * 4 + [str(paths[1])] * 4
    assert [list(map(int, r[1:5])) for r in table[1:4]] == [[0, 0, 28, 28], [0, 28, 28, 56], [28, 0, 56, 28]]
    got = np.array([[float(v) for v in r[5:]] for r in table[1:]])
    net = Net(deploy, weights=model, verbose=False)
    with torch.no_grad():
        net(data=torch.from_numpy(digits.astype(np.float32) * 0.00390625))
    np.testing.assert_allclose(got, net.blobs["prob"].numpy(), rtol=1e-4, atol=1e-6)
    # a mean image is reduced to one value a channel (Caffe's detect.py)
    ncio.write_binaryproto_array(str(tmp_path / "mean.binaryproto"),
                                 np.concatenate([np.full((1, 1, 28, 14), 5.0), np.full((1, 1, 28, 14), 15.0)], 3))
    assert main([str(windows), str(out), "--model_def", deploy, "--pretrained_model", model, "--context_pad", "0",
                 "--mean_file", str(tmp_path / "mean.binaryproto"), *SCALE]) == 0
    with open(out, newline="") as f:
        got = np.array([[float(v) for v in r[5:]] for r in list(csv.reader(f))[1:]])
    with torch.no_grad():
        net(data=torch.from_numpy((digits.astype(np.float32) - 10.0) * 0.00390625))
    np.testing.assert_allclose(got, net.blobs["prob"].numpy(), rtol=1e-4, atol=1e-6)
    # HDF5 with context: the windows grow by 28 / (28 - 8) and are padded with the (zero) mean at the edges
    h5 = tmp_path / "det.h5"
    assert main([str(windows), str(h5), "--model_def", deploy, "--pretrained_model", model, "--context_pad", "4",
                 *SCALE]) == 0
    with h5py.File(h5, "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f["filename"][:]] == [str(p) for p in paths
                                                                                          for _ in range(4)]
        assert f["window"].shape == (8, 4) and f["prediction"].shape == (8, 10)
        pred = f["prediction"][:]
    det = caffe.Detector(deploy, model, raw_scale=255, input_scale=0.00390625, context_pad=4)
    ref = det.detect_windows([(str(paths[0]), [(0, 0, 28, 28), (0, 28, 28, 56), (28, 0, 56, 28), (28, 28, 56, 56)])])
    np.testing.assert_allclose(pred[:4], np.stack([d["prediction"] for d in ref]), rtol=1e-5, atol=1e-7)
    assert [d["window"] for d in ref][1] == (0, 28, 28, 56) and ref[0]["filename"] == str(paths[0])


def test_bad_input(scene, tmp_path, capsys):
    paths, deploy, model, _ = scene
    base = ["--model_def", deploy, "--pretrained_model", model, "--context_pad", "4"]
    out = str(tmp_path / "o.csv")

    def fails(text: str, *extra: str, name: str = "w.csv") -> str:
        (tmp_path / name).write_text(text)
        assert main([str(tmp_path / name), out, *base, *extra]) == 1
        return capsys.readouterr().err

    assert "w.csv:1: the header must name filename, ymin, xmin, ymax and xmax; missing xmax" in \
        fails("filename,ymin,xmin,ymax\n")
    assert "w.csv:3: xmin must be a whole pixel index, got '1.5'" in \
        fails(f"filename,ymin,xmin,ymax,xmax\n{paths[0]},0,0,28,28\n{paths[0]},0,1.5,28,28\n")
    assert "w.csv:2: the window (0, 0, 0, 28) is empty" in fails(f"filename,ymin,xmin,ymax,xmax\n{paths[0]},0,0,0,28\n")
    assert "w.csv: image nope.png: no such file" in fails("filename,ymin,xmin,ymax,xmax\nnope.png,0,0,28,28\n")
    assert "w.csv: no windows after the header" in fails("filename,ymin,xmin,ymax,xmax\n")
    assert "--context_pad: context_pad 14 leaves no window" in \
        fails(f"filename,ymin,xmin,ymax,xmax\n{paths[0]},0,0,28,28\n", "--context_pad", "14")
    assert "crops nothing of the 56x56 image" in \
        fails(f"filename,ymin,xmin,ymax,xmax\n{paths[0]},60,60,70,70\n", "--context_pad", "0")
    import numpy as np
    np.save(tmp_path / "mean4.npy", np.zeros(4, np.float32))  # (was "--context_pad: Mean channels incompatible")
    assert "mean4.npy: a mean of shape [4] does not fit the" in \
        fails(f"filename,ymin,xmin,ymax,xmax\n{paths[0]},0,0,28,28\n", "--mean_file", str(tmp_path / "mean4.npy"))
    assert "selective_search_ijcv_with_python" in fails(f"{paths[0]}\n", name="images.txt")
    assert "unknown input file type" in fails("x", name="w.json")
    (tmp_path / "latin1.csv").write_bytes(b"filename,ymin,xmin,ymax,xmax\nb\xe9.png,0,0,28,28\n")
    assert main([str(tmp_path / "latin1.csv"), out, *base]) == 1
    assert "latin1.csv: byte 30 is not UTF-8 text (expected a windows file)" in capsys.readouterr().err
    import os
    os.mkfifo(tmp_path / "pipe.csv")
    assert main([str(tmp_path / "pipe.csv"), out, *base]) == 1
    assert "pipe.csv: is a FIFO (named pipe)" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
