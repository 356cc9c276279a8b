"""WindowData (R-CNN's window files): parsing, sampling, Caffe's crop/warp/pad arithmetic, mirror, means."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from netcompress.data.db import DataError
from netcompress.data.image import resize_linear
from netcompress.errors import NetDefinitionError
from netcompress.io import write_binaryproto_array
from netcompress.proto import caffe_pb2 as pb


@pytest.fixture
def images(tmp_path):
    """Two 16x16 (and 20x12) RGB images; returned as the BGR arrays Caffe's imread gives."""
    rng = np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(16, 16), (12, 20)]):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(tmp_path / f"im{i}.png")
        out.append(rgb[..., ::-1].copy())
    return out


def window_file(tmp_path, windows0, windows1=(), name="windows.txt"):
    lines = ["# 0", "im0.png", "3", "16", "16", str(len(windows0)), *windows0,
             "# 1", "im1.png", "3", "12", "20", str(len(windows1)), *windows1]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_text(source, root, batch=4, crop=8, extra="", transform=""):
    return (f'name: "w" type: "WindowData" top: "data" top: "label" '
            f'transform_param {{ crop_size: {crop} {transform} }} '
            f'window_data_param {{ source: "{source}" root_folder: "{root}/" batch_size: {batch} {extra} }}')


def test_a_batch_is_background_windows_then_foreground_ones(tmp_path, images, make_layer, data_log):
    # one foreground window of class 2 and one background window, each an 8x8 region: warped to 8x8 unchanged
    src = window_file(tmp_path, ["2 0.9 4 4 11 11", "5 0.1 0 0 7 7", "1 0.4 0 0 3 3"], ["3 0.7 10 2 17 9"])
    layer = make_layer(layer_text(src, tmp_path, batch=8, extra="fg_fraction: 0.5 bg_threshold: 0.3"))
    assert layer.top_shapes([]) == [(8, 3, 8, 8), (8,)]
    x, y = (t.numpy() for t in layer())
    layer.close()
    assert y[:4].tolist() == [0, 0, 0, 0]  # background: label forced to 0
    assert set(y[4:].tolist()) <= {2.0, 3.0}
    bg = images[0][0:8, 0:8].transpose(2, 0, 1).astype(np.float32)
    for i in range(4):
        np.testing.assert_array_equal(x[i], bg)
    fg = {2.0: images[0][4:12, 4:12], 3.0: images[1][2:10, 10:18]}
    for i in range(4, 8):
        np.testing.assert_array_equal(x[i], fg[float(y[i])].transpose(2, 0, 1).astype(np.float32))
    assert "class 0 has 1 samples" in data_log and "class 2 has 1 samples" in data_log  # the 0.4 window is dropped
    assert "Number of images: 2" in data_log and "output data size: 8,3,8,8" in data_log


def test_context_padding_and_the_border(tmp_path, images, make_layer):
    """crop 8, context_pad 2: a 4x4 window is expanded twice around its centre. Inside the image the 9x9
    region (2..10) warps to 8x8; at the corner the region (-2..6) is clipped to 0..6, warped to 6x6 and
    placed at (2, 2) of a zero crop; mirrored, the padding moves to the other side (pad_w = pad_x2 = 0)."""
    src = window_file(tmp_path, ["1 0.9 4 4 7 7", "1 0.9 0 0 3 3", "0 0.0 0 0 3 3"])
    img = images[0]
    layer = make_layer(layer_text(src, tmp_path, batch=1, extra="fg_fraction: 1 context_pad: 2"))
    reader = layer.reader
    fg_inside, fg_corner = reader.fg
    assert reader.geometry(fg_inside, 16, 16, False) == (2, 2, 10, 10, 8, 8, 0, 0)
    assert reader.geometry(fg_corner, 16, 16, False) == (0, 0, 6, 6, 6, 6, 2, 2)
    assert reader.geometry(fg_corner, 16, 16, True) == (0, 0, 6, 6, 6, 6, 2, 0)
    seen = set()
    for _ in range(12):
        x, y = (t.numpy() for t in layer())
        assert y.tolist() == [1.0]
        if x[0, :, :2].any():  # the inside window fills the whole crop
            want = resize_linear(img[2:11, 2:11], 8, 8).transpose(2, 0, 1)
            seen.add("inside")
        else:
            want = np.zeros((3, 8, 8), np.float32)
            want[:, 2:, 2:] = resize_linear(img[0:7, 0:7], 6, 6).transpose(2, 0, 1)
            seen.add("corner")
        np.testing.assert_array_equal(x[0], want)
    layer.close()
    assert seen == {"inside", "corner"}
    # mirror: the corner window flipped, its padding on the right
    layer = make_layer(layer_text(src.parent / src.name, tmp_path, batch=1, extra="fg_fraction: 1 context_pad: 2",
                                  transform="mirror: true"))
    flipped = np.zeros((3, 8, 8), np.float32)
    flipped[:, 2:, :6] = resize_linear(img[0:7, 0:7], 6, 6)[:, ::-1].transpose(2, 0, 1)
    got = {"flipped": False}
    for _ in range(40):
        x = layer()[0].numpy()[0]
        if np.array_equal(x, flipped):
            got["flipped"] = True
    layer.close()
    assert got["flipped"]


def test_square_crop_mode_and_means_and_scale(tmp_path, images, make_layer):
    src = window_file(tmp_path, ["1 0.9 4 6 11 9", "0 0.0 0 0 7 7"])
    layer = make_layer(layer_text(src, tmp_path, batch=1, extra='fg_fraction: 1 crop_mode: "square"'))
    # an 8x4 window (centre 8, 8) made square, half size 4: Caffe's region is centre -/+ half, 4..12 inclusive,
    # 9 pixels (its arithmetic, reproduced), warped to 8x8
    assert layer.reader.geometry(layer.reader.fg[0], 16, 16, False) == (4, 4, 12, 12, 8, 8, 0, 0)
    layer.close()
    mean = np.random.default_rng(1).uniform(0, 255, (1, 3, 10, 10)).astype(np.float32)
    write_binaryproto_array(str(tmp_path / "mean.binaryproto"), mean)
    layer = make_layer(layer_text(src, tmp_path, batch=1, extra="fg_fraction: 1 scale: 0.5",
                                  transform=f'mean_file: "{tmp_path}/mean.binaryproto"'))
    x = layer()[0].numpy()[0]
    layer.close()
    crop = images[0][6:10, 4:12]  # rows 6..9, cols 4..11, warped to 8x8
    want = (resize_linear(crop, 8, 8).transpose(2, 0, 1).astype(np.float32) - mean[0, :, 1:9, 1:9]) * np.float32(0.5)
    np.testing.assert_array_equal(x, want)
    layer = make_layer(layer_text(src, tmp_path, batch=1, extra="fg_fraction: 1",
                                  transform="mean_value: 10 mean_value: 20 mean_value: 30"))
    x = layer()[0].numpy()[0]
    layer.close()
    np.testing.assert_array_equal(x, resize_linear(crop, 8, 8).transpose(2, 0, 1).astype(np.float32)
                                  - np.float32([10, 20, 30])[:, None, None])


def test_batches_are_a_function_of_the_seed_and_cache_images_changes_nothing(tmp_path, images, make_layer):
    src = window_file(tmp_path, ["1 0.9 0 0 7 7", "2 0.8 8 8 15 15", "0 0.0 4 4 11 11", "0 0.1 0 8 7 15"],
                      ["3 0.9 0 0 7 7", "0 0.2 12 4 19 11"])
    runs = []
    for cache in ("false", "true"):
        layer = make_layer(layer_text(src, tmp_path, batch=6, extra=f"cache_images: {cache} context_pad: 1",
                                      transform="mirror: true"), seed=11)
        runs.append([[t.numpy().copy() for t in layer()] for _ in range(3)])
        layer.close()
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert runs[0][1][1].tolist()[:5] == [0, 0, 0, 0, 0]  # num_fg = int(6 * 0.25) = 1


@pytest.mark.parametrize("windows, message", [
    (["0 0.9 0 0 7 7", "0 0.0 0 0 7 7"], r"line 7: a foreground window \(overlap 0.9 >= fg_threshold 0.5\) has "
                                         r"class label 0; it must be > 0"),
    (["1 0.9 0 0 7"], r"line 8: expected a window's y2, got '#'"),
    (["1 0.9 7 0 0 7", "0 0.0 0 0 7 7"], r"line 7: window \(7, 0, 0, 7\) has x2 < x1"),
    (["1 x 0 0 7 7"], r"line 7: expected a window's overlap, got 'x'"),
    (["1 0.9 0 0 7 7"], r"has 1 foreground and 0 background windows; WindowData needs both"),
])
def test_bad_window_files_name_the_line(tmp_path, images, make_layer, windows, message):
    src = window_file(tmp_path, windows)
    with pytest.raises(DataError, match=message):
        make_layer(layer_text(src, tmp_path))


def test_bad_settings_and_files(tmp_path, images, make_layer):
    src = window_file(tmp_path, ["1 0.9 0 0 7 7", "0 0.0 0 0 7 7"])
    with pytest.raises(NetDefinitionError, match="crop_size must be set"):
        make_layer(layer_text(src, tmp_path, crop=0))
    with pytest.raises(NetDefinitionError, match='crop_mode must be "warp" or "square", got "round"'):
        make_layer(layer_text(src, tmp_path, extra='crop_mode: "round"'))
    with pytest.raises(NetDefinitionError, match="context_pad 4 leaves no window in a crop of 8 pixels"):
        make_layer(layer_text(src, tmp_path, extra="context_pad: 4"))
    with pytest.raises(DataError, match=r"layer .* \(type WindowData\): Failed to open window file"):
        make_layer(layer_text(tmp_path / "nope.txt", tmp_path))
    (tmp_path / "bad_index.txt").write_text("# 1\nim0.png 3 16 16 0\n")
    with pytest.raises(DataError, match=r"line 1: image index 1, expected 0"):
        make_layer(layer_text(tmp_path / "bad_index.txt", tmp_path))
    (tmp_path / "short.txt").write_text("# 0\nim0.png 3 16 16 1\n1 0.9 0 0\n")
    with pytest.raises(DataError, match=r"short.txt' ends at line 3 where a window's x2 was expected"):
        make_layer(layer_text(tmp_path / "short.txt", tmp_path))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"Window file is empty: '.*empty.txt'"):
        make_layer(layer_text(tmp_path / "empty.txt", tmp_path))
    (tmp_path / "gray.txt").write_text("# 0\nim0.png 1 16 16 0\n")
    with pytest.raises(DataError, match=r"line 2: 1 channels; WindowData reads every image in colour"):
        make_layer(layer_text(tmp_path / "gray.txt", tmp_path))
    # a window outside its image (no context padding: cropped as it is) fails the batch, naming the line
    out = window_file(tmp_path, ["1 0.9 10 10 17 17", "0 0.0 0 0 7 7"], name="out.txt")
    layer = make_layer(layer_text(out, tmp_path, batch=4, extra="fg_fraction: 1"))
    with pytest.raises(DataError, match=r"the window \(10, 10, 17, 17\) of line 7 of '.*out.txt' lies outside its "
                                        r"16x16 image"):
        layer()
    layer.close()
    # a missing image fails the batch with its path
    (tmp_path / "im1.png").unlink()
    layer = make_layer(layer_text(window_file(tmp_path, ["0 0.0 0 0 7 7"], ["2 0.9 0 0 7 7"], name="m.txt"),
                                  tmp_path, batch=4, extra="fg_fraction: 1"))
    with pytest.raises(DataError, match=r"Could not open or find file .*im1.png"):
        layer()
    layer.close()


def test_in_a_net_it_trains(tmp_path, images):
    """A tiny classifier over WindowData in a TRAIN net: forward and backward run."""
    from netcompress.net import Net
    from google.protobuf import text_format

    src = window_file(tmp_path, ["1 0.9 0 0 7 7", "2 0.8 8 8 15 15", "0 0.0 4 4 11 11"])
    net = Net(text_format.Parse(f"""
        layer {{ {layer_text(src, tmp_path, batch=4, extra="context_pad: 1", transform="mirror: true")
                 .replace('name: "w"', 'name: "w"')} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 3 }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}""",
                                pb.NetParameter()), phase=pb.TRAIN, seed=3)
    net()
    net.loss.backward()
    assert net.layer("ip").weight.grad is not None
