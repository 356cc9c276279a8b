"""netcompress classify (Caffe's python/classify.py, cpp_classification's top-k) on Caffe's trained LeNet."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from netcompress import io as ncio
from netcompress.net import Net
from netcompress.tools.classify import main

REPO_DEPLOY = "examples/mnist/lenet.prototxt"
SCALE = ["--raw_scale", "255", "--input_scale", "0.00390625"]  # LeNet's transform_param scale: 1/256


@pytest.fixture
def digits(fixture_workdir, caffe_split, tmp_path, request):
    """The 1,000 test digits as PNG files, Caffe's LeNet model and its deploy net, and the digits' labels."""
    folder = tmp_path / "digits"
    folder.mkdir()
    x, y = caffe_split["test_x"], caffe_split["test_y"]
    for i, im in enumerate(x):
        Image.fromarray(im[0]).save(folder / f"{i:03d}.png")
    deploy = request.config.rootpath / REPO_DEPLOY
    return folder, fixture_workdir / "lenet" / "lenet_iter_5000.caffemodel", deploy, x, y


def _reference(deploy, model, x):
    net = Net(str(deploy), weights=str(model), verbose=False)
    with torch.no_grad():
        net(data=torch.from_numpy(x.astype(np.float32) * 0.00390625))
    return net.blobs["prob"].numpy()


def test_center_only_equals_the_net_on_the_digits(digits, tmp_path, capsys):
    folder, model, deploy, x, y = digits
    out = tmp_path / "pred.npy"
    assert main([str(folder), str(out), "--model_def", str(deploy), "--pretrained_model", str(model), "--ext", "png",
                 "--center_only", *SCALE]) == 0
    printed = capsys.readouterr().out
    assert "CPU mode" in printed and "Loading folder" in printed and "Classifying 1000 inputs." in printed
    pred = np.load(out)
    # a gray net reads gray images; the numbers of the net fed the digits directly (in one batch, where
    # classify feeds the deploy net's 64: float sums in another order)
    ref = _reference(deploy, model, x)
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(pred.argmax(1), ref.argmax(1))
    # Caffe's own score of this model on these digits (its log's last "Test net output #0: accuracy")
    assert (pred.argmax(1) == y).mean() == 0.968


def test_oversample_labels_and_one_file(digits, tmp_path, capsys):
    folder, model, deploy, x, y = digits
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {k}\n" for k in range(10)))
    out = tmp_path / "ten.npy"
    assert main([str(folder / "000.png"), str(out), "--model_def", str(deploy), "--pretrained_model", str(model),
                 *SCALE, "--labels", str(labels), "--top_k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    pred = np.load(out)
    assert pred.shape == (1, 10)
    np.testing.assert_allclose(pred.sum(1), 1, rtol=1e-5)
    # at the input's own size the ten crops are the image and its mirror: their mean
    ref = _reference(deploy, model, np.concatenate([x[:1], x[:1, :, :, ::-1]]))
    np.testing.assert_allclose(pred[0], ref.mean(0), rtol=1e-5, atol=1e-7)
    i = printed.index("---------- Prediction for input 0 ----------")
    top = printed[i + 1:i + 4]
    order = np.argsort(-pred[0], kind="stable")[:3]
    assert top == [f'{pred[0][k]:.4f} - "digit {k}"' for k in order]
    # an .npy of H x W x K images in [0, 1]
    arr = tmp_path / "in.npy"
    np.save(arr, (x[:4].transpose(0, 2, 3, 1) / 255.0).astype(np.float32))
    assert main([str(arr), str(tmp_path / "npy_out"), "--model_def", str(deploy), "--pretrained_model", str(model),
                 "--center_only", *SCALE]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "npy_out.npy"), _reference(deploy, model, x[:4]),
                               rtol=1e-5, atol=1e-6)


def test_mean_file_binaryproto(digits, tmp_path):
    folder, model, deploy, x, _ = digits
    mean = np.full((1, 1, 28, 28), 10.0, np.float32)
    ncio.write_binaryproto_array(str(tmp_path / "mean.binaryproto"), mean)
    out = tmp_path / "m.npy"
    assert main([str(folder), str(out), "--model_def", str(deploy), "--pretrained_model", str(model), "--ext", "png",
                 "--center_only", "--mean_file", str(tmp_path / "mean.binaryproto"), *SCALE]) == 0
    np.testing.assert_allclose(np.load(out), _reference(deploy, model, x.astype(np.float32) - 10.0),
                               rtol=1e-5, atol=1e-6)


def test_bad_input(digits, tmp_path, capsys):
    folder, model, deploy, _, _ = digits
    base = ["--model_def", str(deploy), "--pretrained_model", str(model)]
    out = str(tmp_path / "o.npy")
    assert main([str(tmp_path / "nothing"), out, *base]) == 1
    assert "nothing: no such image, folder or .npy file" in capsys.readouterr().err
    assert main([str(folder), out, *base]) == 1   # the default --ext jpg
    assert "no *.jpg images in the folder" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "bad.png"), out, *base]) == 1
    assert "bad.png: cannot read the image" in capsys.readouterr().err
    labels = tmp_path / "few.txt"
    labels.write_text("a\nb\n")
    assert main([str(folder / "001.png"), out, *base, "--labels", str(labels)]) == 1
    assert "few.txt: 2 labels, but the net has 10 outputs" in capsys.readouterr().err
    assert main([str(folder / "001.png"), out, "--model_def", str(tmp_path / "no.prototxt"),
                 "--pretrained_model", str(model)]) == 1
    assert "--model_def" in capsys.readouterr().err
    assert main([str(folder / "001.png"), out, *base, "--images_dim", "28"]) == 1
    assert "--images_dim takes 'height,width', got '28'" in capsys.readouterr().err
    for option, value in (("--raw_scale", "nan"), ("--input_scale", "inf")):  # NaN outputs and numpy's warning
        assert main([str(folder / "001.png"), out, *base, option, value]) == 1
        assert f"{option} must be a finite number, got {float(value)}" in capsys.readouterr().err
    assert main([str(folder / "001.png"), out, *base, "--raw_scale", "0"]) == 1
    assert "--raw_scale must not be 0" in capsys.readouterr().err
    # values that overflow float32 when scaled (numpy's RuntimeWarning and NaN outputs; found by the fuzz), or
    # that are not finite to start with
    np.save(tmp_path / "huge.npy", np.full((1, 28, 28, 1), 3e38, np.float32))
    assert main([str(tmp_path / "huge.npy"), out, *base]) == 1
    assert "the preprocessed inputs are not finite (overflow encountered in multiply): --raw_scale 255.0" in \
        capsys.readouterr().err
    np.save(tmp_path / "nan.npy", np.stack([np.zeros((28, 28, 1)), np.full((28, 28, 1), np.nan)]))
    assert main([str(tmp_path / "nan.npy"), out, *base]) == 1
    assert "nan.npy: image 1 holds values that are not finite as float32" in capsys.readouterr().err
    for crop in ([], ["--center_only"]):  # (center_only was numpy's broadcast error: a traceback)
        assert main([str(folder / "001.png"), out, *base, "--images_dim", "27,30", *crop]) == 1
        assert "--images_dim 27,30 is smaller than the net's 28x28 input" in capsys.readouterr().err
    # a mean that does not fit the 1-channel input (it was pycaffe's ValueError: a traceback)
    np.save(tmp_path / "rgb_mean.npy", np.zeros((3, 28, 28), np.float32))
    assert main([str(folder / "001.png"), out, *base, "--mean_file", str(tmp_path / "rgb_mean.npy")]) == 1
    assert (f"{tmp_path / 'rgb_mean.npy'}: a mean of shape [3, 28, 28] does not fit the 1-channel input 'data' "
            "(expected one value a channel, or a 1 x H x W image)") in capsys.readouterr().err
    np.save(tmp_path / "wide_mean.npy", np.zeros(2, np.float32))
    assert main([str(folder / "001.png"), out, *base, "--mean_file", str(tmp_path / "wide_mean.npy")]) == 1
    assert "wide_mean.npy: a mean of shape [2] does not fit" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()


COLOUR_NET = """
name: "rgb"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.01 } } }
"""


def test_colour_images_are_swapped_to_bgr(tmp_path):
    (tmp_path / "rgb.prototxt").write_text(COLOUR_NET)
    net = Net(str(tmp_path / "rgb.prototxt"), seed=3, verbose=False)
    net.save(str(tmp_path / "rgb.caffemodel"))
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    base = [str(tmp_path / "im.png"), str(tmp_path / "o.npy"), "--model_def", str(tmp_path / "rgb.prototxt"),
            "--pretrained_model", str(tmp_path / "rgb.caffemodel"), "--center_only"]

    def ref(im):
        with torch.no_grad():
            net(data=torch.from_numpy(im.transpose(2, 0, 1)[None].astype(np.float32)))
        return net.blobs["fc"].numpy()

    assert main(base) == 0   # the default channel swap 2,1,0: RGB -> BGR
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), ref(rgb[:, :, ::-1]), rtol=1e-5, atol=1e-5)
    assert main(base + ["--channel_swap", ""]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), ref(rgb), rtol=1e-5, atol=1e-5)
