"""DataTransformer, Datum decoding and the OpenCV-style image helpers against hand-worked values."""
from __future__ import annotations

import io

import numpy as np
import pytest

from netcompress.data.image import bgr_to_gray, decode_image, encode_image, resize_linear
from netcompress.data.transformer import (DataTransformer, TransformError, array_to_datum,
                                          datum_to_array)
from netcompress.io import write_binaryproto_array
from netcompress.proto import caffe_pb2 as pb


def tp(**kw) -> pb.TransformationParameter:
    mv = kw.pop("mean_value", [])
    p = pb.TransformationParameter(**kw)
    p.mean_value.extend(mv)
    return p


def positional(c: int, h: int, w: int) -> np.ndarray:
    """x[c, h, w] = 100 c + 10 h + w: every value says where it came from."""
    return (100 * np.arange(c)[:, None, None] + 10 * np.arange(h)[None, :, None]
            + np.arange(w)[None, None, :]).astype(np.uint8)


# -- arithmetic ------------------------------------------------------------------------------

def test_scale_only_is_x_times_scale_in_float32():
    x = np.array([[[0, 1], [128, 255]]], dtype=np.uint8)
    y = DataTransformer(tp(scale=0.00390625)).transform(x)
    assert y.dtype == np.float32 and y.shape == (1, 2, 2)
    np.testing.assert_array_equal(y, [[[0.0, 0.00390625], [0.5, 0.99609375]]])


def test_mean_value_once_is_subtracted_before_scaling():
    x = np.array([[[0, 10], [20, 255]]], dtype=np.uint8)
    y = DataTransformer(tp(scale=0.5, mean_value=[5])).transform(x)
    np.testing.assert_array_equal(y, [[[-2.5, 2.5], [7.5, 125.0]]])


def test_mean_value_once_applies_to_every_channel():
    x = np.full((3, 1, 2), 10, dtype=np.uint8)
    y = DataTransformer(tp(mean_value=[4])).transform(x)
    np.testing.assert_array_equal(y, np.full((3, 1, 2), 6.0, np.float32))


def test_mean_value_per_channel():
    x = np.full((3, 2, 2), 100, dtype=np.uint8)
    y = DataTransformer(tp(scale=2.0, mean_value=[104, 117, 123])).transform(x)
    np.testing.assert_array_equal(y[:, 0, 0], [-8.0, -34.0, -46.0])


def test_mean_value_count_must_be_one_or_channels():
    with pytest.raises(TransformError, match="Specify either 1 mean_value or as many as channels: 3"):
        DataTransformer(tp(mean_value=[1, 2])).transform(np.zeros((3, 2, 2), np.uint8))


def test_caffe_rounding_is_reproduced_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, 5, 7)).astype(np.float32)
    t = DataTransformer(tp(scale=0.017))
    t.mean, t.mean_file = mean, "<test>"
    want = (x.astype(np.float32) - mean) * np.float32(0.017)  # Caffe: (Dtype(x) - mean) * scale
    np.testing.assert_array_equal(t.transform(x), want)


def test_mean_file_with_test_center_crop(tmp_path):
    x = positional(2, 7, 8)
    mean = np.arange(2 * 7 * 8, dtype=np.float32).reshape(1, 2, 7, 8) / 4
    path = tmp_path / "mean.binaryproto"
    write_binaryproto_array(str(path), mean)
    t = DataTransformer(tp(mean_file=str(path), crop_size=4, scale=0.5), pb.TEST)
    y = t.transform(x)
    # TEST: h_off = (7 - 4) // 2 = 1, w_off = (8 - 4) // 2 = 2; the mean is cropped at the same place.
    want = (x[:, 1:5, 2:6].astype(np.float32) - mean[0, :, 1:5, 2:6]) * np.float32(0.5)
    np.testing.assert_array_equal(y, want)
    assert y[0, 0, 0] == (12 - mean[0, 0, 1, 2]) * 0.5


@pytest.mark.parametrize("h,w,crop,offs", [(7, 8, 4, (1, 2)), (6, 6, 3, (1, 1)), (5, 9, 5, (0, 2)),
                                           (28, 28, 28, (0, 0))])
def test_test_phase_center_crop_offsets(h, w, crop, offs):
    y = DataTransformer(tp(crop_size=crop), pb.TEST).transform(positional(1, h, w))
    assert y.shape == (1, crop, crop)
    assert y[0, 0, 0] == 10 * offs[0] + offs[1]


def test_mean_file_and_mean_value_together_are_refused(tmp_path):
    path = tmp_path / "m.binaryproto"
    write_binaryproto_array(str(path), np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(TransformError, match="Cannot specify mean_file and mean_value"):
        DataTransformer(tp(mean_file=str(path), mean_value=[1]))


def test_mean_file_shape_must_match_the_record(tmp_path):
    path = tmp_path / "m.binaryproto"
    write_binaryproto_array(str(path), np.zeros((1, 1, 2, 2), np.float32))
    with pytest.raises(TransformError, match="mean file"):
        DataTransformer(tp(mean_file=str(path))).transform(np.zeros((1, 3, 3), np.uint8))


def test_crop_larger_than_record_is_refused():
    with pytest.raises(TransformError, match="crop_size 5"):
        DataTransformer(tp(crop_size=5)).transform(np.zeros((1, 4, 6), np.uint8))


# -- randomness ------------------------------------------------------------------------------

def test_train_crop_and_mirror_follow_the_generator():
    t = DataTransformer(tp(crop_size=3, mirror=True), pb.TRAIN)
    x = positional(1, 6, 7)
    a = [t.transform(x, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    seen_offsets, seen_mirror = set(), set()
    rng = np.random.default_rng(1)
    for _ in range(200):
        m, ho, wo = t.draw(x.shape, rng)
        assert 0 <= ho <= 3 and 0 <= wo <= 4
        seen_offsets.add((ho, wo))
        seen_mirror.add(m)
    assert len(seen_offsets) == 20 and seen_mirror == {True, False}


def test_draw_order_is_mirror_then_h_then_w_as_caffe():
    t = DataTransformer(tp(crop_size=2, mirror=True), pb.TRAIN)
    r = np.random.default_rng(3)
    expect = (bool(r.integers(2)), int(r.integers(4)), int(r.integers(5)))
    y = t.transform(positional(1, 5, 6), np.random.default_rng(3))
    ho, wo = expect[1], expect[2]
    crop = positional(1, 5, 6)[:, ho:ho + 2, wo:wo + 2].astype(np.float32)
    np.testing.assert_array_equal(y, crop[:, :, ::-1] if expect[0] else crop)


def test_mirror_flips_columns_and_applies_in_test_phase_too():
    # Caffe's DataTransformer mirrors whenever `mirror` is set, in either phase.
    t = DataTransformer(tp(mirror=True), pb.TEST)
    x = positional(1, 2, 3)
    outs = {t.transform(x, np.random.default_rng(s)).tobytes() for s in range(20)}
    assert outs == {x.astype(np.float32).tobytes(), x[:, :, ::-1].astype(np.float32).tobytes()}


def test_random_transform_without_generator_is_an_error():
    with pytest.raises(TransformError, match="random generator"):
        DataTransformer(tp(mirror=True)).transform(np.zeros((1, 2, 2), np.uint8))


def test_test_phase_crop_needs_no_generator():
    assert not DataTransformer(tp(crop_size=2), pb.TEST).needs_rand
    assert DataTransformer(tp(crop_size=2), pb.TRAIN).needs_rand


# -- Datums ----------------------------------------------------------------------------------

def test_raw_and_float_datums():
    x = positional(2, 3, 4)
    d = array_to_datum(x, label=3)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 3)
    np.testing.assert_array_equal(datum_to_array(d), x)
    f = array_to_datum(x.astype(np.float32) / 7)
    assert len(f.data) == 0 and len(f.float_data) == 24
    np.testing.assert_array_equal(datum_to_array(f), x.astype(np.float32) / 7)
    y = DataTransformer(tp(scale=2.0)).transform_datum(f)
    np.testing.assert_array_equal(y, (x.astype(np.float32) / 7) * 2)


def test_datum_size_mismatch_is_reported():
    d = pb.Datum(channels=1, height=2, width=2, data=b"\x00\x01\x02")
    with pytest.raises(TransformError, match="3 bytes"):
        datum_to_array(d, name="k")


def _png_rgb(r: int, g: int, b: int, size=(5, 4)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (r, g, b)).save(buf, format="PNG")
    return buf.getvalue()


def test_encoded_png_decodes_to_bgr():
    d = pb.Datum(data=_png_rgb(200, 100, 50), encoded=True, label=1)
    x = datum_to_array(d)
    assert x.shape == (3, 4, 5) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[:, 0, 0], [50, 100, 200])  # B, G, R


def test_encoded_jpeg_decodes_to_bgr():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (220, 120, 30)).save(buf, format="JPEG", quality=95)
    x = datum_to_array(pb.Datum(data=buf.getvalue(), encoded=True))
    assert x.shape == (3, 16, 16)
    assert np.all(np.abs(x[:, 8, 8].astype(int) - [30, 120, 220]) <= 3)


def test_encoded_gray_is_one_channel_and_force_color_replicates():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (3, 2), 77).save(buf, format="PNG")
    d = pb.Datum(data=buf.getvalue(), encoded=True)
    assert datum_to_array(d).shape == (1, 2, 3)
    t = DataTransformer(tp(force_color=True))
    y = t.transform_datum(d)
    assert y.shape == (3, 2, 3) and np.all(y == 77)


def test_force_gray_uses_opencv_weights():
    d = pb.Datum(data=_png_rgb(200, 100, 50), encoded=True)
    y = DataTransformer(tp(force_gray=True)).transform_datum(d)
    # OpenCV BGR2GRAY: (B*1868 + G*9617 + R*4899 + 8192) >> 14
    assert y.shape == (1, 4, 5) and y[0, 0, 0] == (50 * 1868 + 100 * 9617 + 200 * 4899 + 8192) >> 14


def test_force_color_and_force_gray_together_are_refused():
    with pytest.raises(TransformError, match="both force_color and force_gray"):
        DataTransformer(tp(force_color=True, force_gray=True))


def test_encode_decode_png_round_trip_keeps_bgr():
    img = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(img, "png")), img)
    gray = decode_image(encode_image(img, "png"), "gray")
    np.testing.assert_array_equal(bgr_to_gray(img), gray)


def test_corrupt_encoded_datum_names_the_record():
    with pytest.raises(ValueError, match="Could not decode image key7"):
        datum_to_array(pb.Datum(data=b"not an image", encoded=True), name="key7")


# -- resize ----------------------------------------------------------------------------------

def test_resize_linear_matches_opencv_values():
    # cv2.resize(np.uint8([[0, 100]]), (4, 1)) == [[0, 25, 75, 100]] (pixel-centre mapping, clamped)
    out = resize_linear(np.array([[[0], [100]]], np.uint8), 1, 4)
    np.testing.assert_array_equal(out[..., 0], [[0, 25, 75, 100]])


def test_resize_linear_exact_half_is_area_average():
    x = np.array([[0, 1, 10, 20], [2, 3, 30, 40], [5, 5, 6, 6], [5, 6, 6, 6]], np.uint8)[..., None]
    out = resize_linear(x, 2, 2)[..., 0]
    np.testing.assert_array_equal(out, [[(0 + 1 + 2 + 3 + 2) >> 2, (10 + 20 + 30 + 40 + 2) >> 2],
                                        [(5 + 5 + 5 + 6 + 2) >> 2, (6 + 6 + 6 + 6 + 2) >> 2]])


def test_resize_linear_identity_and_constant():
    x = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(x, 5, 7), x)
    c = np.full((5, 7, 3), 93, np.uint8)
    assert np.all(resize_linear(c, 11, 3) == 93)
