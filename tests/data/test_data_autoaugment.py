"""TransformationParameter fields 8-11 (recipes-spec 5.4): std_value, autoaugment, pad_crop,
cutout_size, and test T10 (section 5.7): the MicroNet magnitudes, LAST_ONLY composition, crop
offsets 0..7, the clipped 16x16 Cutout box. Expected values are computed here with numpy or
PIL directly, not with netcompress.data.autoaugment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image

from netcompress.data import autoaugment as aug
from netcompress.data.transformer import DataTransformer, TransformError
from netcompress.proto import caffe_pb2 as pb


def data_layer(source, batch: int, extra: str, prefetch: int | None = None) -> str:
    pf = f"prefetch: {prefetch}" if prefetch is not None else ""
    return (f'name: "d" type: "Data" top: "data" top: "label" {extra} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {pf} }}')


MICRONET_MEAN = [255 * 0.49139968, 255 * 0.48215841, 255 * 0.44653091]
MICRONET_STD = [255 * 0.24703223, 255 * 0.24348513, 255 * 0.26158784]


def tp(text: str) -> pb.TransformationParameter:
    return text_format.Parse(text, pb.TransformationParameter())


def one_op(name: str, prob: float, level: int, extra: str = "") -> pb.TransformationParameter:
    return tp(f'autoaugment {{ op {{ name: "{name}" prob: {prob} level: {level} }} num_ops: 1 }} {extra}')


def image(seed: int = 0, c: int = 3, h: int = 32, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (c, h, w), dtype=np.uint8)


def run(param: pb.TransformationParameter, x: np.ndarray, seed: int = 0, phase=pb.TRAIN) -> np.ndarray:
    return DataTransformer(param, phase).transform(x, np.random.default_rng(seed))


# -- the magnitude table of section 4.11 -------------------------------------------------------

def test_micronet_policy_is_the_fifteen_tuples_of_the_source():
    want = [("Invert", 0.2, 2), ("Contrast", 0.4, 4), ("Rotate", 0.5, 1), ("TranslateX", 0.4, 3),
            ("Sharpness", 0.5, 3), ("ShearY", 0.3, 4), ("TranslateY", 0.6, 8), ("AutoContrast", 0.6, 3),
            ("Equalize", 0.5, 5), ("Solarize", 0.4, 4), ("Color", 0.5, 5), ("Posterize", 0.2, 2),
            ("Brightness", 0.4, 5), ("Cutout", 0.3, 3), ("ShearX", 0.1, 3)]
    assert [(o.name, o.prob, o.level) for o in aug.MICRONET_CIFAR100] == want


@pytest.mark.parametrize("name, level, magnitude", [
    ("Contrast", 4, 0.82), ("Rotate", 1, 3), ("TranslateX", 3, 3), ("Sharpness", 3, 0.64),
    ("ShearY", 4, 0.12), ("TranslateY", 8, 8), ("Solarize", 4, 154), ("Color", 5, 1.0),
    ("Posterize", 2, 4), ("Brightness", 5, 1.0), ("Cutout", 3, 6), ("ShearX", 3, 0.09),
    ("Invert", 2, None), ("AutoContrast", 3, None), ("Equalize", 5, None),
])
def test_magnitudes_of_the_micronet_policy(name, level, magnitude):
    got = aug.op_magnitude(name, level)
    if magnitude is None:
        assert got is None
    else:
        assert got == pytest.approx(magnitude, rel=1e-12)


def pil_rgba(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0))).convert("RGBA")


def from_rgba(im: Image.Image) -> np.ndarray:
    """Pixels as float32 CxHxW, transparent (filled) pixels 0, as the transform's unwrap does with
    mean 0 and std 1."""
    a = np.asarray(im)
    out = a[:, :, :3].transpose(2, 0, 1).astype(np.float32)
    out[:, a[:, :, 3] == 0] = 0
    return out


def test_t10_rotate_level_1_turns_by_plus_or_minus_3_degrees():
    x = image(1)
    plus, minus = from_rgba(pil_rgba(x).rotate(3)), from_rgba(pil_rgba(x).rotate(-3))
    signs = set()
    for seed in range(12):
        y = run(one_op("Rotate", 1.0, 1), x, seed)
        if np.array_equal(y, plus):
            signs.add(+1)
        elif np.array_equal(y, minus):
            signs.add(-1)
        else:
            pytest.fail(f"seed {seed}: Rotate level 1 is neither +3 nor -3 degrees")
    assert signs == {+1, -1}
    # the corners the rotation uncovers are the mean colour (0 in normalised space)
    assert np.all(run(one_op("Rotate", 1.0, 1), x)[:, 0, 0] == 0)


def test_t10_solarize_level_4_inverts_from_154():
    x = np.array([0, 100, 153, 154, 155, 200, 255], np.uint8)
    x = np.broadcast_to(x, (3, 4, 7)).copy()
    y = run(one_op("Solarize", 1.0, 4), x)
    want = np.where(x >= 154, 255 - x.astype(np.int32), x).astype(np.float32)
    np.testing.assert_array_equal(y, want)
    assert y[0, 0].tolist() == [0, 100, 153, 101, 100, 55, 0]


def test_t10_posterize_level_2_keeps_4_bits():
    x = image(2, h=5, w=6)
    y = run(one_op("Posterize", 1.0, 2), x)
    np.testing.assert_array_equal(y, (x & 0xF0).astype(np.float32))
    assert run(one_op("Posterize", 1.0, 2), np.full((3, 1, 1), 0b10111111, np.uint8)).ravel().tolist() == [176] * 3


@pytest.mark.parametrize("name", ["Color", "Brightness"])
def test_t10_color_and_brightness_level_5_are_the_identity(name):
    extra = (" ".join(f"mean_value: {m}" for m in MICRONET_MEAN) + " "
             + " ".join(f"std_value: {s}" for s in MICRONET_STD) + " scale: 0.003921569")
    x = image(3)
    plain = run(tp(extra), x)
    # bit for bit: the op runs (probability 1), wraps, changes nothing, and unwraps
    np.testing.assert_array_equal(run(one_op(name, 1.0, 5, extra), x), plain)


def test_probability_zero_leaves_the_record_alone_and_one_always_applies():
    x = image(4)
    np.testing.assert_array_equal(run(one_op("Invert", 0.0, 2), x), x.astype(np.float32))
    np.testing.assert_array_equal(run(one_op("Invert", 1.0, 2), x), (255 - x).astype(np.float32))


def test_translate_x_level_3_shifts_3_pixels_and_fills_with_the_mean_colour():
    x = image(5).astype(np.float32)
    shifts = set()
    for seed in range(10):
        y = run(one_op("TranslateX", 1.0, 3), x.astype(np.uint8), seed)
        # PIL's affine (1, 0, v, 0, 1, 0) reads input column c + v for output column c
        left = np.concatenate([x[:, :, 3:], np.zeros((3, 32, 3), np.float32)], axis=2)   # v = +3
        right = np.concatenate([np.zeros((3, 32, 3), np.float32), x[:, :, :-3]], axis=2)  # v = -3
        if np.array_equal(y, left):
            shifts.add(3)
        else:
            np.testing.assert_array_equal(y, right)
            shifts.add(-3)
    assert shifts == {3, -3}


# -- LAST_ONLY: only the second pick survives ---------------------------------------------------

# Deterministic ops (probability 1, no random sign), with numpy versions written here.
DET_OPS = [("Invert", 2, lambda p: 255 - p),
           ("Solarize", 4, lambda p: np.where(p >= 154, 255 - p, p)),
           ("Posterize", 2, lambda p: p & 0xF0),
           ("FlipUD", 0, lambda p: p[:, ::-1, :])]


def picks(seed: int, n_ops: int, num: int) -> list[int]:
    """The op indices the transformer draws (its documented order: choice, then the probability
    draw, per pick; these ops draw nothing else)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        out.append(int(rng.integers(n_ops)))
        rng.random()
    return out


@pytest.mark.parametrize("seed", range(8))
def test_t10_last_only_applies_only_the_second_drawn_op(seed):
    ops = " ".join(f'op {{ name: "{n}" prob: 1 level: {l} }}' for n, l, _ in DET_OPS)
    x = image(10 + seed, h=8, w=8).astype(np.int32)
    a, b = picks(seed, len(DET_OPS), 2)
    last = run(tp(f"autoaugment {{ {ops} num_ops: 2 compose: LAST_ONLY }}"), x.astype(np.uint8), seed)
    seq = run(tp(f"autoaugment {{ {ops} num_ops: 2 compose: SEQUENTIAL }}"), x.astype(np.uint8), seed)
    fa, fb = DET_OPS[a][2], DET_OPS[b][2]
    np.testing.assert_array_equal(last, fb(x).astype(np.float32))
    np.testing.assert_array_equal(seq, fb(fa(x)).astype(np.float32))


def test_last_only_picks_vary_with_the_seed():
    pairs = {tuple(picks(s, len(DET_OPS), 2)) for s in range(8)}
    assert len(pairs) > 3 and any(a != b for a, b in pairs)


def test_micronet_policy_runs_on_a_normalised_cifar_record():
    extra = (" ".join(f"mean_value: {m}" for m in MICRONET_MEAN) + " "
             + " ".join(f"std_value: {s}" for s in MICRONET_STD))
    t = DataTransformer(tp(f"autoaugment {{ policy: MICRONET_CIFAR100 compose: LAST_ONLY }} {extra}"), pb.TRAIN)
    assert len(t.aug_ops) == 15 and t.aug_num == 2 and t.aug_last_only
    x = image(6)
    plain = DataTransformer(tp(extra), pb.TRAIN).transform(x)
    outs = [t.transform(x, np.random.default_rng(s)) for s in range(30)]
    assert all(o.shape == (3, 32, 32) and o.dtype == np.float32 for o in outs)
    changed = sum(not np.array_equal(o, plain) for o in outs)
    assert 0 < changed < 30  # some picks fail their probability or are no-ops (Color, Brightness)


# -- pad / crop, mirror, cutout ---------------------------------------------------------------

def crop_offsets(param: pb.TransformationParameter, draws: int) -> list[tuple[int, int]]:
    x = (1 + np.arange(64, dtype=np.float32)).reshape(1, 8, 8)
    padded = np.zeros((1, 16, 16), np.float32)
    padded[:, 4:12, 4:12] = x
    t = DataTransformer(param, pb.TRAIN)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(draws):
        y = t.transform(x, rng)
        found = [(i, j) for i in range(9) for j in range(9) if np.array_equal(padded[:, i:i + 8, j:j + 8], y)]
        assert len(found) == 1
        out.append(found[0])
    return out


def test_t10_pad_crop_offsets_lie_in_0_to_7_with_max_offset_7():
    offs = crop_offsets(tp("pad_crop { pad: 4 max_offset: 7 }"), 300)
    tops, lefts = {t for t, _ in offs}, {l for _, l in offs}
    assert tops == set(range(8)) and lefts == set(range(8))


def test_pad_crop_default_offsets_reach_2_pad():
    offs = crop_offsets(tp("pad_crop { pad: 4 }"), 300)
    assert {t for t, _ in offs} == set(range(9))


@pytest.mark.parametrize("pad,max_offset", [(3, 0), (11, 0), (40, 5), (100000, 0), (1073741824, 0)])
def test_pad_crop_takes_the_window_of_the_padded_record_without_padding_it(pad, max_offset):
    # (the record was padded first: a pad of 10^5 asked for 149 GiB, 2^30 overflowed numpy's sizes)
    x = (1 + np.arange(3 * 5 * 7, dtype=np.float32)).reshape(3, 5, 7)
    t = DataTransformer(tp(f"pad_crop {{ pad: {pad} max_offset: {max_offset} }}"), pb.TRAIN)
    rng, draws = np.random.default_rng(2), np.random.default_rng(2)
    limit = max_offset or 2 * pad
    inside = 0
    for _ in range(60):
        top, left = int(draws.integers(limit + 1)), int(draws.integers(limit + 1))  # the transformer's draws
        y = t.transform(x, rng)
        expected = np.zeros_like(y)
        for r in range(5):
            for c in range(7):
                i, j = top + r - pad, left + c - pad  # the padded record's (top + r, left + c)
                if 0 <= i < 5 and 0 <= j < 7:
                    expected[:, r, c] = x[:, i, j]
        np.testing.assert_array_equal(y, expected)
        inside += bool(expected.any())
    if pad < 40:
        assert inside > 0  # some windows hold part of the record (with pad 40 and offsets 0-5 none does)


def test_pad_crop_fill_zero_before_mean_pads_with_normalised_black():
    t = tp("mean_value: 10 mean_value: 20 std_value: 2 std_value: 4 pad_crop { pad: 2 fill: ZERO_BEFORE_MEAN }")
    x = np.full((2, 4, 4), 30, np.uint8)
    ys = [run(t, x, s) for s in range(20)]
    vals = set(np.unique(np.stack(ys)[:, 0]).tolist()) | set(np.unique(np.stack(ys)[:, 1]).tolist())
    # the image: (30-10)/2 = 10 and (30-20)/4 = 2.5; the border: (0-10)/2 = -5 and (0-20)/4 = -5
    assert vals == {10.0, -5.0, 2.5}


def test_t10_cutout_zeroes_a_16x16_box_clipped_at_the_border():
    t = DataTransformer(tp("cutout_size: 16"), pb.TRAIN)
    x = np.full((3, 32, 32), 7, np.uint8)
    rng = np.random.default_rng(1)
    sizes = set()
    for _ in range(400):
        y = t.transform(x, rng)
        zero = y == 0
        assert np.array_equal(zero[0], zero[1]) and np.array_equal(zero[0], zero[2])
        rows, cols = np.nonzero(zero[0])
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert zero[0, top:bottom, left:right].all() and zero[0].sum() == (bottom - top) * (right - left)
        h, w = bottom - top, right - left
        # a centre c gives rows [max(0, c-8), min(32, c+8)): 16 unless clipped, at least 8
        assert h == 16 or (top == 0 or bottom == 32) and 8 <= h < 16
        assert w == 16 or (left == 0 or right == 32) and 8 <= w < 16
        sizes.add((h, w))
    assert (16, 16) in sizes and any(s != (16, 16) for s in sizes)


def test_micronet_order_and_draw_order():
    """normalise -> pad/crop -> mirror -> cutout -> scale, drawing mirror, (top, left), (row, col)."""
    param = tp("mean_value: 3 std_value: 2 scale: 0.5 mirror: true pad_crop { pad: 2 max_offset: 3 } cutout_size: 4")
    x = image(7, c=1, h=6, w=6)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        mirror = bool(rng.integers(2))
        top, left = int(rng.integers(4)), int(rng.integers(4))
        cy, cx = int(rng.integers(6)), int(rng.integers(6))
        want = (x.astype(np.float32) - np.float32(3)) / np.float32(2)
        padded = np.zeros((1, 10, 10), np.float32)
        padded[:, 2:8, 2:8] = want
        want = padded[:, top:top + 6, left:left + 6]
        if mirror:
            want = want[:, :, ::-1]
        want = want.copy()
        want[:, max(0, cy - 2):min(6, cy + 2), max(0, cx - 2):min(6, cx + 2)] = 0
        want = want * np.float32(0.5)
        np.testing.assert_array_equal(run(param, x, seed), want)


def test_std_value_divides_after_the_mean_and_before_the_scale():
    x = np.array([[[0, 100]], [[50, 255]]], np.uint8)
    y = run(tp("mean_value: 10 mean_value: 20 std_value: 4 std_value: 5 scale: 0.5"), x, phase=pb.TEST)
    want = (x.astype(np.float32) - np.array([10, 20], np.float32)[:, None, None]) \
        / np.array([4, 5], np.float32)[:, None, None] * np.float32(0.5)
    np.testing.assert_array_equal(y, want)
    assert y[:, 0, 0].tolist() == [-1.25, 3.0]


def test_augmentations_are_train_only():
    param = tp("autoaugment { op { name: \"Invert\" prob: 1 level: 0 } } pad_crop { pad: 4 } cutout_size: 8 scale: 2")
    t = DataTransformer(param, pb.TEST)
    assert not t.needs_rand
    x = image(8)
    np.testing.assert_array_equal(t.transform(x), x.astype(np.float32) * 2)
    assert DataTransformer(param, pb.TRAIN).needs_rand


@pytest.mark.parametrize("text, match", [
    ('autoaugment { policy: MICRONET_CIFAR100 op { name: "Invert" prob: 1 level: 1 } }', "not both"),
    ('autoaugment { op { name: "Twirl" prob: 1 level: 1 } }', "unknown AutoAugment op 'Twirl'"),
    ('autoaugment { op { name: "Invert" prob: 1.5 level: 1 } }', r"prob must lie in \[0, 1\]"),
    ('pad_crop { pad: 2 max_offset: 5 }', "larger than 2 \\* pad = 4"),
    ('std_value: 0', "std_value must be non-zero"),
    ('autoaugment { policy: MICRONET_CIFAR100 num_ops: 0 }', r"num_ops must lie in \[1, 1,000\].*got 0"),
    ('autoaugment { policy: MICRONET_CIFAR100 num_ops: 2147483647 }', r"num_ops must lie in \[1, 1,000\]"),
    ('scale: inf', r"transform_param.scale must be finite, got \[inf\]"),
    ('scale: 1e39', r"transform_param.scale must be finite, got \[inf\]"),  # past float32
    ('mean_value: 1 mean_value: nan', r"transform_param.mean_value must be finite, got \[1.0, nan\]"),
    ('std_value: -inf', r"transform_param.std_value must be finite"),
])
def test_bad_parameters_are_named(text, match):
    with pytest.raises(TransformError, match=match):
        DataTransformer(tp(text), pb.TRAIN, name="layer 'cifar'")


def test_record_errors_name_the_field():
    with pytest.raises(TransformError, match="1 std_value or as many as channels: 3"):
        run(tp("std_value: 1 std_value: 2"), image(0))
    with pytest.raises(TransformError, match="1- or 3-channel records"):
        run(one_op("Invert", 1.0, 1), image(0, c=2))


def test_one_channel_records_are_grey_images():
    x = image(9, c=1, h=6, w=6)
    np.testing.assert_array_equal(run(one_op("Invert", 1.0, 1), x), (255 - x).astype(np.float32))


# -- through a Data layer: reproducible and resumable ------------------------------------------

MICRONET_TRANSFORM = ("transform_param { mirror: true scale: 0.003921569 "
                      + " ".join(f"mean_value: {m}" for m in MICRONET_MEAN) + " "
                      + " ".join(f"std_value: {s}" for s in MICRONET_STD)
                      + " autoaugment { policy: MICRONET_CIFAR100 num_ops: 2 compose: LAST_ONLY }"
                      + " pad_crop { pad: 4 max_offset: 7 } cutout_size: 16 }")


@pytest.fixture
def cifar_like_lmdb(tmp_path, write_records):
    x = np.random.default_rng(3).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    datums = [pb.Datum(channels=3, height=32, width=32, data=x[i].tobytes(), label=i) for i in range(12)]
    return write_records(tmp_path / "cifar_lmdb", datums)


def test_data_layer_with_the_micronet_transform_is_a_function_of_seed_and_batch(cifar_like_lmdb, make_layer):
    mk = lambda seed: make_layer(data_layer(cifar_like_lmdb, 4, MICRONET_TRANSFORM, prefetch=0),
                                 phase=pb.TRAIN, seed=seed)
    a, b, c = mk(5), mk(5), mk(6)
    seq = [a()[0] for _ in range(3)]
    assert seq[0].shape == (4, 3, 32, 32)
    for i in (2, 0, 1):
        np.testing.assert_array_equal(b.load_batch(i)[0], seq[i].numpy())
    assert not np.array_equal(c.load_batch(0)[0], seq[0].numpy())


def test_data_layer_with_the_micronet_transform_resumes_exactly(cifar_like_lmdb, make_layer):
    a = make_layer(data_layer(cifar_like_lmdb, 4, MICRONET_TRANSFORM), phase=pb.TRAIN, seed=21)
    for _ in range(2):
        a()
    state = a.state_dict()
    want = [a() for _ in range(3)]
    b = make_layer(data_layer(cifar_like_lmdb, 4, MICRONET_TRANSFORM), phase=pb.TRAIN, seed=None)
    b.load_state_dict(state)
    got = [b() for _ in range(3)]
    for (wd, wl), (gd, gl) in zip(want, got):
        assert torch.equal(wd, gd) and torch.equal(wl, gl)
    a.close(), b.close()
