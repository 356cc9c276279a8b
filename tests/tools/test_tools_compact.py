"""The compact 4/4 and 4/8 formats (reference-semantics 5.7, 5.8): byte-exact records, exact
round trips, and the encode/decode scripts."""
from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from netcompress.tools import compact
from netcompress.tools.compact import CompactError, decode_blob, encode_blob

CB_M1 = [0.0, -2**-7, -2**-6, -2**-5, -2**-4, -2**-3, -2**-2, -2**-1,
         2**-7, 2**-6, 2**-5, 2**-4, 2**-3, 2**-2, 2**-1, 0.0]  # maxE = -1, minE = -7


def spec_encode(values, idx_bits):
    """A plain loop over the spec's rules: the oracle for the vectorized encoder."""
    v = np.asarray(values, np.float32).ravel()
    nz = [i for i in range(v.size) if v[i] != 0]
    if not nz:
        return struct.pack("<i", 0) + bytes(64)
    max_e = int(np.log2(max(abs(float(v[i])) for i in nz)))
    min_e = max_e - 6
    cb = [0.0] + [-(2.0 ** (min_e + i)) for i in range(7)] + [2.0 ** (min_e + i) for i in range(7)] + [0.0]
    cb32 = np.array(cb, np.float32)
    span = 1 << idx_bits
    entries, prev = [], -1
    for p in nz:
        d = p - prev
        prev = p
        while d > span:
            entries.append((span, 0))
            d -= span
        code = next(i for i in range(15) if cb32[i] == v[p])
        entries.append((d, code))
    n = len(entries)
    if n % 2:
        entries.append((1, 0))
    codes = bytes(16 * entries[k][1] + entries[k + 1][1] for k in range(0, len(entries), 2))
    if idx_bits == 4:
        idx = bytes(16 * (entries[k][0] - 1) + entries[k + 1][0] - 1 for k in range(0, len(entries), 2))
    else:
        idx = bytes(e[0] - 1 for e in entries)
    return struct.pack("<i", n) + cb32.tobytes() + codes + idx


# ----------------------------------------------------------------------------------------------
# Hand-worked records
# ----------------------------------------------------------------------------------------------

def test_hand_worked_4_4_record():
    x = np.zeros(40, np.float32)
    x[0], x[3], x[20], x[36] = 0.5, -0.25, 2**-7, -(2**-7)
    # entries (idx, code): p0 d=1 (1, +2^-1 -> 14); p3 d=3 (3, -2^-2 -> 6);
    # p20 d=17 -> filler (16, 0) then (1, +2^-7 -> 8); p36 d=16 (16, -2^-7 -> 1); N = 5, pad (1, 0)
    expected = (bytes([5, 0, 0, 0])
                + struct.pack("<16f", *CB_M1)
                + bytes([0xE6, 0x08, 0x10])   # codes 14,6 | 0,8 | 1,0
                + bytes([0x02, 0xF0, 0xF0]))  # idx-1  0,2 | 15,0 | 15,0
    assert struct.pack("<f", -(2**-7)) == bytes([0, 0, 0, 0xBC])
    got = encode_blob(x, 4)
    assert got == expected and len(got) == 74
    out, end = decode_blob(got, 0, 40, 4)
    assert end == 74
    np.testing.assert_array_equal(out, x)


def test_hand_worked_4_8_record():
    x = np.zeros(600, np.float32)
    x[0], x[256], x[513], x[514] = 0.5, -0.25, 2**-7, -(2**-7)
    # p0 d=1 (1, 14); p256 d=256 (256, 6); p513 d=257 -> filler (256, 0) then (1, 8); p514 d=1 (1, 1);
    # N = 5, pad (1, 0); one index byte per entry, pad included
    expected = (bytes([5, 0, 0, 0])
                + struct.pack("<16f", *CB_M1)
                + bytes([0xE6, 0x08, 0x10])
                + bytes([0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00]))
    got = encode_blob(x, 8)
    assert got == expected and len(got) == 77
    out, end = decode_blob(got, 0, 600, 8)
    assert end == 77
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("bits", [4, 8])
def test_empty_blob_is_a_68_byte_record(bits):
    for x in (np.zeros(0, np.float32), np.zeros(7, np.float32), np.array([0.0, -0.0], np.float32)):
        rec = encode_blob(x, bits)
        assert rec == bytes(68)
        out, end = decode_blob(rec, 0, x.size, bits)
        assert end == 68 and out.size == x.size and not out.any()


@pytest.mark.parametrize("bits,gaps", [(4, {16: 1, 17: 2, 32: 2, 33: 3, 1: 1}),
                                       (8, {256: 1, 257: 2, 512: 2, 513: 3, 1: 1})])
def test_gap_boundaries_and_entry_counts(bits, gaps):
    # A single nonzero at position d-1 has gap d: ceil(d / span) entries (N), plus an uncounted pad if odd.
    for d, entries in gaps.items():
        x = np.zeros(d + 3, np.float32)
        x[d - 1] = -4.0
        rec = encode_blob(x, bits)
        assert struct.unpack_from("<i", rec)[0] == entries
        half = (entries + 1) // 2
        assert len(rec) == 68 + half + (half if bits == 4 else 2 * half)
        assert rec == spec_encode(x, bits)
        np.testing.assert_array_equal(decode_blob(rec, 0, x.size, bits)[0], x)


@pytest.mark.parametrize("bits", [4, 8])
def test_odd_and_even_entry_counts(bits):
    for n in (1, 2, 3, 4):
        x = np.zeros(10, np.float32)
        x[:n] = 1.0
        rec = encode_blob(x, bits)
        assert struct.unpack_from("<i", rec)[0] == n  # N excludes the pad entry
        half = (n + 1) // 2
        assert len(rec) == 68 + half + (half if bits == 4 else 2 * half)
        if n % 2:  # the pad entry: value code 0 in the low nibble, idx-1 = 0
            assert rec[68 + half - 1] & 0x0F == 0
        np.testing.assert_array_equal(decode_blob(rec, 0, 10, bits)[0], x)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("max_exp", [127, 0, -3, -143, -149])
def test_exponent_window_edges(bits, max_exp):
    # the max exponent, the min exponent (max-6), negatives, float32's extremes (2^127, subnormals)
    rng = np.random.default_rng(max_exp + 200)
    x = np.zeros(300, np.float32)
    e = np.clip(np.arange(max_exp - 6, max_exp + 1), -149, None)
    pos = rng.choice(300, size=2 * e.size, replace=False)
    x[pos] = np.concatenate([np.ldexp(1.0, e), -np.ldexp(1.0, e)]).astype(np.float32)
    rec = encode_blob(x, bits)
    assert rec == spec_encode(x, bits)
    np.testing.assert_array_equal(decode_blob(rec, 0, 300, bits)[0], x)
    cb = np.frombuffer(rec, "<f4", 16, 4)
    assert cb[14] == np.float32(2.0 ** max_exp) and cb[7] == -np.float32(2.0 ** max_exp)


@pytest.mark.parametrize("bits", [4, 8])
def test_random_blobs_match_the_spec_and_round_trip(bits):
    rng = np.random.default_rng(bits)
    for trial in range(30):
        n = int(rng.integers(1, 3000))
        density = [0.0005, 0.01, 0.1, 0.5, 1.0][trial % 5]
        max_exp = int(rng.integers(-10, 4))
        x = np.ldexp(rng.choice([-1.0, 1.0], n), rng.integers(max_exp - 6, max_exp + 1, n)).astype(np.float32)
        x[rng.random(n) > density] = 0
        rec = encode_blob(x.reshape(1, -1), bits)
        assert rec == spec_encode(x, bits)
        out, end = decode_blob(rec, 0, n, bits)
        assert end == len(rec)
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("bits", [4, 8])
def test_lenet_ip1_sized_blob_round_trips(bits):
    rng = np.random.default_rng(0)
    x = np.zeros(400_000, np.float32)
    pos = rng.choice(x.size, size=4300, replace=False)
    x[pos] = np.ldexp(rng.choice([-1.0, 1.0], pos.size), rng.integers(-8, -1, pos.size))
    rec = encode_blob(x, bits)
    np.testing.assert_array_equal(decode_blob(rec, 0, x.size, bits)[0], x)


@pytest.mark.parametrize("value,match", [
    (0.3, r"value 0.3\d* at index 5 is not 0 or ±2\^e with e in \[-7, -1\]"),
    (2.0**-8, r"value 0.00390625 at index 5 is not 0 or ±2\^e with e in \[-7, -1\]"),
    (np.nan, r"value nan at index 5 cannot be encoded"),
    (np.inf, r"value inf at index 5 cannot be encoded"),
])
def test_unencodable_values_are_named(value, match):
    x = np.zeros(10, np.float32)
    x[2] = 0.5
    x[5] = value
    with pytest.raises(CompactError, match=match):
        encode_blob(x, 4, "layer 'ip1' weight")


def test_largest_magnitude_must_be_a_power_of_two():
    with pytest.raises(CompactError, match=r"layer 'x' bias: the largest magnitude, 0.75 \(index 1\)"):
        encode_blob(np.array([0.5, -0.75], np.float32), 8, "layer 'x' bias")


# ----------------------------------------------------------------------------------------------
# Files of several layers
# ----------------------------------------------------------------------------------------------

def _two_layers():
    rng = np.random.default_rng(5)
    w1 = np.ldexp(1.0, rng.integers(-5, 0, (3, 40))).astype(np.float32) * (rng.random((3, 40)) < 0.2)
    b1 = np.zeros(3, np.float32)
    w2 = np.ldexp(-1.0, rng.integers(-2, 3, (5, 3))).astype(np.float32)
    b2 = np.array([0.25, 0, -2.0**-7, 0, 0], np.float32)
    return [("a", w1, b1), ("b", w2, b2)], [("a", 120, 3), ("b", 15, 5)]


@pytest.mark.parametrize("bits", [4, 8])
def test_file_round_trip_and_mismatch_errors(bits):
    blobs, shapes = _two_layers()
    data = compact.encode_layers(blobs, bits)
    assert data[len(encode_blob(blobs[0][1], bits)):].startswith(bytes(68))  # b1 is all zero
    out = compact.decode_layers(data, shapes, bits)
    for (name, w, b), (dw, db) in zip(blobs, out):
        np.testing.assert_array_equal(dw, w.ravel())
        np.testing.assert_array_equal(db, b.ravel())
    assert compact.sniff_format(data, shapes) == [{4: "4/4", 8: "4/8"}[bits]]
    with pytest.raises(CompactError, match="truncated"):
        compact.decode_layers(data[:-1], shapes, bits)
    with pytest.raises(CompactError, match="4 bytes are left after"):
        compact.decode_layers(data + b"\0\0\0\0", shapes, bits)
    with pytest.raises(CompactError, match="layer 'a' weight record at byte 0 addresses entry"):
        compact.decode_layers(data, [("a", 100, 3), ("b", 15, 5)], bits)


# ----------------------------------------------------------------------------------------------
# The scripts
# ----------------------------------------------------------------------------------------------

ENC = {4: compact.encode_compact_main, 8: compact.encode_compact48_main}
DEC = {4: compact.decode_compact_main, 8: compact.decode_compact48_main}
TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def encoder_pattern(layers, sizes, out, bits):
    lines = ["", "", re.escape("layer list:  " + repr(list(layers)))]
    for name in layers:
        nw, nb = sizes[name]
        lines += [re.escape(f"encoding layer [{name}] weight ... ") + TS,
                  re.escape(f"             num of weights: {nw}"),
                  re.escape("                " + " " * len(name) + "  bias ..."),
                  re.escape(f"             num of bias: {nb}"),
                  re.escape(f"time for layer [{name}]: ") + r"\d+\.\d{6} seconds"]
    lines.append("")
    if bits == 8:
        lines += [re.escape(f"compact model saved as {out}"), ""]
    lines += [r"total time: \d+\.\d{6} s", ""]
    return lines


def decoder_pattern(layers, out):
    lines = [""]
    for name in layers:
        lines += [re.escape(f"decoding layer [{name}] weight ... ") + TS,
                  re.escape("                " + " " * len(name) + "  bias ..."),
                  re.escape(f"time for layer [{name}]: ") + r"\d+\.\d{6} seconds"]
    return lines + ["", re.escape(f"Model decoded. Saved as {out} [time: ") + r"\d+\.\d{6} s\] ", ""]


def assert_lines(text, patterns):
    lines = text.split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert len(lines) == len(patterns), lines
    for line, pat in zip(lines, patterns):
        assert re.fullmatch(pat, line), (line, pat)


LAYERS = ("feat", "hidden", "score")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("flavour,bias", [("inq", True), ("inq", False), ("dns", True), ("masked", True),
                                          ("masked", False), ("normal", True)])
def test_encode_decode_scripts_round_trip(models, blobs_of, capsys, tmp_path, bits, flavour, bias):
    # INQ at 100 %: masks all 0 (quantized); DNS: masks applied before encoding.
    src = models.build(flavour, bias=bias, seed=bits, pow2=True, mask="zeros" if flavour == "inq" else "random")
    binary = str(tmp_path / "model.binary")
    assert ENC[bits]([src.prototxt, src.model, binary]) == 0
    sizes = {n: (src.blobs[n]["weight"].size, src.blobs[n]["bias"].size if bias else 0) for n in LAYERS}
    assert_lines(capsys.readouterr().out, encoder_pattern(LAYERS, sizes, binary, bits))
    normal = models.proto("normal", bias)
    out = str(tmp_path / "decoded.caffemodel")
    assert DEC[bits]([normal, binary, out]) == 0
    assert_lines(capsys.readouterr().out, decoder_pattern(LAYERS, out))
    got = blobs_of(out)
    for n in LAYERS:
        d = src.blobs[n]
        w, b = d["weight"], d.get("bias")
        if flavour in ("dns", "masked"):
            w = np.where(d["weight_mask"] == 1, w, 0)
            b = np.where(d["bias_mask"] == 1, b, 0) if bias else None
        np.testing.assert_array_equal(got[n][0], w)
        if bias:
            np.testing.assert_array_equal(got[n][1], b)
        else:
            assert len(got[n]) == 1
    # the decoded normal model encodes to the same bytes
    again = str(tmp_path / "again.binary")
    assert ENC[bits]([normal, out, again]) == 0
    assert open(again, "rb").read() == open(binary, "rb").read()


def test_no_bias_layers_get_empty_bias_records(models, tmp_path, capsys):
    src = models.build("inq", bias=False, seed=3, pow2=True, mask="zeros")
    binary = tmp_path / "m.binary"
    assert compact.encode_compact_main([src.prototxt, src.model, str(binary)]) == 0
    data = binary.read_bytes()
    off = 0
    for n in LAYERS:
        off += len(encode_blob(src.blobs[n]["weight"], 4))
        assert data[off:off + 68] == bytes(68)
        off += 68
    assert off == len(data)


def test_encoder_names_the_layer_and_value_and_writes_nothing(models, capsys, tmp_path):
    src = models.build("inq", seed=4, pow2=True, mask="zeros")
    from netcompress.net import Net
    import torch
    net = Net(src.prototxt, phase="test", verbose=False)
    net.copy_from(src.model)
    with torch.no_grad():
        net.layer("hidden").weight.view(-1)[7] = 0.3
    bad = str(tmp_path / "bad.caffemodel")
    net.save(bad)
    out = tmp_path / "x.binary"
    assert compact.encode_compact_main([src.prototxt, bad, str(out)]) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    assert re.search(r"layer 'hidden' weight: (value 0.3\d* at index 7|the largest magnitude, 0.3)", cap.err)
    assert not out.exists()


def test_encode_refuses_unsupported_layers(models, capsys, tmp_path):
    extra = 'layer { name: "norm" type: "BatchNorm" bottom: "score" top: "norm" }'
    src = models.build("inq", seed=5, pow2=True, mask="zeros", extra_layers=extra)
    assert compact.encode_compact_main([src.prototxt, src.model, str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "layer 'norm' (BatchNorm, 3 blob(s)) is not supported" in err
    normal = models.proto("normal", extra_layers=extra)
    (tmp_path / "y.binary").write_bytes(bytes(68 * 6))
    assert compact.decode_compact_main([normal, str(tmp_path / "y.binary"), str(tmp_path / "y")]) == 1
    assert "layer 'norm'" in capsys.readouterr().err


def test_decoder_errors(models, capsys, tmp_path):
    src = models.build("inq", seed=6, pow2=True, mask="zeros")
    binary = str(tmp_path / "m.binary")
    assert compact.encode_compact_main([src.prototxt, src.model, binary]) == 0
    capsys.readouterr()
    out = tmp_path / "o.caffemodel"
    # a masked target net
    assert compact.decode_compact_main([src.prototxt, binary, str(out)]) == 1
    assert "INQConvolution: decode_compact writes a normal model" in capsys.readouterr().err
    # a net of other sizes
    assert compact.decode_compact_main([models.proto("normal", outputs={"hidden": 30}), binary, str(out)]) == 1
    assert "does not match the net" in capsys.readouterr().err
    # the other format
    assert compact.decode_compact48_main([models.proto("normal"), binary, str(out)]) == 1
    assert "other compact format" in capsys.readouterr().err
    # a no-bias net for a file with biases
    assert compact.decode_compact_main([models.proto("normal", bias=False), binary, str(out)]) == 1
    err = capsys.readouterr().err
    assert "has no bias" in err or "does not match the net" in err
    # the caffemodel or the prototxt given as the compact file says what it is
    assert compact.decode_compact_main([models.proto("normal"), src.model, str(out)]) == 1
    assert capsys.readouterr().err.rstrip().endswith("; it is a caffemodel (a net of 6 layers)")
    assert compact.decode_compact_main([models.proto("normal"), src.prototxt, str(out)]) == 1
    assert "(or is the other compact format); it is a net prototxt (" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("main", [compact.encode_compact_main, compact.decode_compact_main,
                                  compact.encode_compact48_main, compact.decode_compact48_main])
def test_script_argument_errors(main, capsys, tmp_path):
    assert main(["a", "b"]) == 2
    err = capsys.readouterr().err
    assert "Usage:" in err and "expected 3 arguments, got 2" in err
    missing = str(tmp_path / "missing.prototxt")
    assert main([missing, "b", "c"]) == 1
    assert capsys.readouterr().err.strip() == f"Error: {missing} does not exist!"
