"""The reference's "compact" model formats, byte-exact (reference-semantics 5.7 and 5.8).

A compact file is, for every layer with parameters in net order, a weight record then a bias record,
back to back, with no header and no names. A record (little-endian):

    int32      N            entries stored: nonzeros plus filler entries, before odd-padding
    float32    codebook[16] [0, -2^minE .. -2^maxE, +2^minE .. +2^maxE, 0]   (maxE = log2 max|x|, minE = maxE-6)
    uint8      codes[ceil(N/2)]   value codes, 4 bits each, first entry in the high nibble
    uint8      deltas[...]        idx-1 per entry: 4 bits packed like codes (format 4/4, ceil(N/2) bytes)
                                  or one byte each (format 4/8, 2*ceil(N/2) bytes)

Entry j stores the gap d = p_j - p_{j-1} (p_{-1} = -1) between flat positions of nonzeros; a gap
above 16 (4/4) or 256 (4/8) is preceded by (d-1)//B filler entries (idx B, value 0). An odd entry
count gets a pad entry (idx 1, value 0) that N does not count. An all-zero blob is N = 0 and a zero
codebook: 68 bytes.

Both directions are vectorized with numpy (AlexNet's fc6 has 37.7M entries). The decoder restores
weights and biases (Decision 8).

The format stores no shapes, so a net whose blobs are larger than the encoded ones would decode
without complaint. `encode_compact` therefore also writes `<file>.shapes.json` beside the compact
file (the file itself stays the reference's, byte for byte): each layer's name and weight and bias
shapes, and the format. `decode_compact` refuses a net whose layers differ from that record; files
without one (the reference's) get the checks the records allow (sizes, positions).
"""
from __future__ import annotations

import datetime
import json
import os
import struct
import time
from typing import Sequence

import numpy as np
import torch

from . import _common
from ._common import (ModelLayer, ToolError, build_target_net, fmt_shape, load_source_model, print_lines, refuse_overwrite,
                      require_files, run_main)
from .. import io as ncio

__all__ = ["encode_blob", "decode_blob", "encode_layers", "decode_layers", "encode_compact",
           "decode_compact", "sniff_format", "CompactError", "FORMATS", "HEADER_BYTES",
           "encode_compact_main", "decode_compact_main", "encode_compact48_main", "decode_compact48_main",
           "SHAPES_SUFFIX"]

VALUE_BITS = 4
NUM_EXPONENTS = 7  # the reference's num_quantum_exp: codes 1..7 negative, 8..14 positive
CODEBOOK_SIZE = 1 << VALUE_BITS
HEADER_BYTES = 4 + 4 * CODEBOOK_SIZE  # int32 N + float32 codebook[16] = 68
FORMATS = {"4/4": 4, "4/8": 8}  # format name -> bits per index delta
SHAPES_SUFFIX = ".shapes.json"  # the shapes record beside a compact file (module docstring)
_SHAPES_KIND = "netcompress compact shapes"


class CompactError(ToolError):
    """A blob cannot be encoded, or a compact file does not match the net."""


def _check_bits(idx_bits: int) -> None:
    if idx_bits not in (4, 8):
        raise ValueError(f"idx_bits must be 4 (format 4/4) or 8 (format 4/8), got {idx_bits}")


def codebook(max_exp: int) -> np.ndarray:
    """The 16-entry float32 codebook for a blob whose largest magnitude is 2^max_exp.

    Built in float64 and cast, as the reference did; entries below float32's range become (-)0."""
    min_exp = max_exp - NUM_EXPONENTS + 1
    cb = np.zeros(CODEBOOK_SIZE, dtype=np.float64)
    for i in range(1, NUM_EXPONENTS + 1):
        cb[i] = -(2.0 ** (min_exp + i - 1))
        cb[i + NUM_EXPONENTS] = 2.0 ** (min_exp + i - 1)
    return cb.astype("<f4")


def _value_codes(vals: np.ndarray, positions: np.ndarray, what: str, hint: str = "") -> tuple[np.ndarray, int]:
    """Codes (1..14) of nonzero float32 values and the blob's max exponent; errors name the value."""
    bad_finite = ~np.isfinite(vals)
    if bad_finite.any():
        k = int(np.argmax(bad_finite))
        raise CompactError(f"{what}: value {float(vals[k])} at index {int(positions[k])} cannot be encoded")
    mant, exp = np.frexp(vals)  # vals = mant * 2**exp, 0.5 <= |mant| < 1
    e = exp.astype(np.int64) - 1
    power = np.abs(mant) == 0.5
    top = int(np.argmax(np.abs(vals)))
    if not power[top]:
        raise CompactError(f"{what}: the largest magnitude, {float(abs(vals[top])):.9g} (index {int(positions[top])}), "
                           f"is not a power of two; the compact format stores only values 0 and "
                           f"±2^e (INQ-quantized models){hint}")
    max_exp = int(e[top])
    min_exp = max_exp - NUM_EXPONENTS + 1
    bad = ~power | (e < min_exp)
    if bad.any():
        k = int(np.argmax(bad))
        raise CompactError(f"{what}: value {float(vals[k]):.9g} at index {int(positions[k])} is not 0 or ±2^e "
                           f"with e in [{min_exp}, {max_exp}] (the {NUM_EXPONENTS} exponents up to the "
                           f"blob's largest magnitude, 2^{max_exp}){hint}")
    codes = np.where(vals < 0, e - min_exp + 1, e - min_exp + 1 + NUM_EXPONENTS)
    return codes.astype(np.uint8), max_exp


def _pack_nibbles(x: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values into bytes, first in the high nibble (x has even length)."""
    return ((x[0::2] << 4) | x[1::2]).astype(np.uint8)


def _unpack_nibbles(b: np.ndarray) -> np.ndarray:
    out = np.empty(2 * b.size, dtype=np.uint8)
    out[0::2] = b >> 4
    out[1::2] = b & 0x0F
    return out


def encode_blob(values, idx_bits: int = 4, what: str = "blob", hint: str = "") -> bytes:
    """One record for a blob (any shape; flattened in C order). `what` names it in errors."""
    _check_bits(idx_bits)
    v = np.asarray(values)
    if v.dtype != np.float32:
        v32 = v.astype(np.float32)
        if not np.array_equal(v32.astype(v.dtype), v, equal_nan=True):
            raise CompactError(f"{what}: values are not representable in float32")
        v = v32
    v = v.reshape(-1)
    positions = np.flatnonzero(v)
    if positions.size == 0:
        return struct.pack("<i", 0) + bytes(4 * CODEBOOK_SIZE)
    vals = v[positions]
    codes, max_exp = _value_codes(vals, positions, what, hint)
    span = 1 << idx_bits
    gaps = np.diff(positions, prepend=-1)  # d_0 = p_0 + 1
    fillers = (gaps - 1) // span
    before = np.cumsum(fillers)  # fillers up to and including entry j's own
    n_entries = int(positions.size + before[-1])
    if n_entries > np.iinfo(np.int32).max:
        raise CompactError(f"{what}: {n_entries} entries do not fit the int32 count")
    padded = n_entries + (n_entries & 1)
    idx = np.full(padded, span, dtype=np.int64)
    code_all = np.zeros(padded, dtype=np.uint8)
    real = np.arange(positions.size) + before
    idx[real] = gaps - span * fillers
    code_all[real] = codes
    if n_entries & 1:
        idx[-1] = 1  # the pad entry: (idx 1, value 0)
    stored = (idx - 1).astype(np.uint8)
    idx_bytes = _pack_nibbles(stored) if idx_bits == 4 else stored
    return b"".join([struct.pack("<i", n_entries), codebook(max_exp).tobytes(),
                     _pack_nibbles(code_all).tobytes(), idx_bytes.tobytes()])


def _record_bytes(n: int, idx_bits: int) -> int:
    half = (n + 1) // 2
    return HEADER_BYTES + half + (half if idx_bits == 4 else 2 * half)


def decode_blob(data: bytes | memoryview, offset: int, count: int, idx_bits: int = 4,
                what: str = "blob", source: str = "compact data") -> tuple[np.ndarray, int]:
    """Decode the record at `offset` into `count` float32 values; returns (values, next offset)."""
    _check_bits(idx_bits)
    mv = memoryview(data)
    if offset + HEADER_BYTES > len(mv):
        raise CompactError(f"{source}: ends at byte {len(mv)}, inside the header of the {what} record "
                           f"(starting at byte {offset}, {HEADER_BYTES} bytes): the file is truncated or "
                           "does not match the net")
    n = struct.unpack_from("<i", mv, offset)[0]
    if n < 0:
        raise CompactError(f"{source}: the {what} record at byte {offset} has a negative entry count {n}")
    end = offset + _record_bytes(n, idx_bits)
    if end > len(mv):
        raise CompactError(f"{source}: the {what} record at byte {offset} holds {n} entries "
                           f"({end - offset} bytes), but the file ends at byte {len(mv)}: the file is truncated "
                           "or does not match the net (or is the other compact format)")
    out = np.zeros(count, dtype=np.float32)
    if n == 0:
        return out, end
    cb = np.frombuffer(mv, dtype="<f4", count=CODEBOOK_SIZE, offset=offset + 4)
    if cb[0] != 0:
        raise CompactError(f"{source}: the {what} record at byte {offset} has codebook[0] = {cb[0]}, "
                           "expected 0: not a compact file, or it does not match the net")
    half = (n + 1) // 2
    at = offset + HEADER_BYTES
    codes = _unpack_nibbles(np.frombuffer(mv, dtype=np.uint8, count=half, offset=at))[:n]
    at += half
    if idx_bits == 4:
        deltas = _unpack_nibbles(np.frombuffer(mv, dtype=np.uint8, count=half, offset=at))[:n]
    else:
        deltas = np.frombuffer(mv, dtype=np.uint8, count=2 * half, offset=at)[:n]
    pos = np.cumsum(deltas.astype(np.int64) + 1) - 1
    if pos[-1] >= count:
        raise CompactError(f"{source}: the {what} record at byte {offset} addresses entry {int(pos[-1])}, "
                           f"but the net's blob has {count} entries: the file does not match the net "
                           "(or is the other compact format)")
    out[pos] = cb[codes]
    return out, end


def encode_layers(blobs: Sequence[tuple[str, np.ndarray, np.ndarray | None]], idx_bits: int = 4) -> bytes:
    """A compact file: for each (name, W, b or None) a weight record then a bias record (an
    absent bias is an empty record, so records stay in pairs)."""
    parts = []
    for name, w, b in blobs:
        parts.append(encode_blob(w, idx_bits, f"layer '{name}' weight"))
        parts.append(encode_blob(np.zeros(0, np.float32) if b is None else b, idx_bits, f"layer '{name}' bias"))
    return b"".join(parts)


def decode_layers(data: bytes, layers: Sequence[tuple[str, int, int]], idx_bits: int = 4,
                  source: str = "compact data") -> list[tuple[np.ndarray, np.ndarray]]:
    """Decode a whole file for layers (name, weight count, bias count); the file must end exactly."""
    out, off = [], 0
    for name, nw, nb in layers:
        w, off = decode_blob(data, off, nw, idx_bits, f"layer '{name}' weight", source)
        b, off = decode_blob(data, off, nb, idx_bits, f"layer '{name}' bias", source)
        out.append((w, b))
    if off != len(data):
        raise CompactError(f"{source}: {len(data) - off} bytes are left after the records of the net's "
                           f"{len(layers)} layers: the file holds more layers than the net")
    return out


def sniff_format(data: bytes, layers: Sequence[tuple[str, int, int]]) -> list[str]:
    """The compact formats ("4/4", "4/8") whose record sizes consume `data` exactly for these layers."""
    found = []
    for name, bits in FORMATS.items():
        try:
            decode_layers(data, layers, bits)
        except CompactError:
            continue
        found.append(name)
    return found


# ----------------------------------------------------------------------------------------------
# The scripts
# ----------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _encodable(l: ModelLayer, model: str) -> tuple[np.ndarray, np.ndarray | None, str, str]:
    """W and b to encode, and error hints for an INQ layer that is not fully quantized."""
    if l.type not in _common.WEIGHT_TYPES:
        raise CompactError(
            f"{model}: layer '{l.name}' ({l.type}, {len(l.blobs)} blob(s)) is not supported: the compact "
            f"format holds the weights and biases of {', '.join(sorted(_common.PLAIN_WEIGHT_TYPES))} layers and "
            "their DNS/INQ/C* variants")
    w, b = l.effective()  # DNS masks applied; INQ values as stored
    hints = []
    for what, mask in (("weights", l.weight_mask), ("biases", l.bias_mask)):
        left = int(np.count_nonzero(mask == 1)) if (l.type in _common.INQ_TYPES and mask is not None) else 0
        hints.append(f" ({left} {what} of this INQ layer are not quantized yet (mask 1): finish INQ to "
                     "100 % first)" if left else "")
    return np.asarray(w, np.float32), (None if b is None else np.asarray(b, np.float32)), hints[0], hints[1]


def encode_compact(src_prototxt: str, src_model: str, output: str, idx_bits: int = 4,
                   quiet: bool = False) -> int:
    """Encode a model (every value 0 or ±2^e, 7 exponents per blob) as a compact file.

    Returns the number of bytes written. DNS layers are encoded with their masks applied."""
    _check_bits(idx_bits)
    require_files(src_prototxt, src_model)
    refuse_overwrite(output, writes="the compact file", source_prototxt=src_prototxt, source_model=src_model)
    src = load_source_model(src_prototxt, src_model)
    if src.missing:
        name, t = src.missing[0]
        raise CompactError(f"{src_model} stores no blobs for layer '{name}' ({t}) of {src_prototxt}: the model "
                           "does not belong to this net")
    selected = [(l, *_encodable(l, src_model)) for l in src.layers]
    # Encode everything first, so that an unencodable value stops the script before it prints.
    parts, lines = [], []
    total_start = time.time()
    for l, w, b, w_hint, b_hint in selected:
        start = time.time()
        stamp = _now()
        parts.append(encode_blob(w, idx_bits, f"{src_model}: layer '{l.name}' weight", w_hint))
        bias = np.zeros(0, np.float32) if b is None else b
        parts.append(encode_blob(bias, idx_bits, f"{src_model}: layer '{l.name}' bias", b_hint))
        lines += ["encoding layer [%s] weight ... %s" % (l.name, stamp),
                  "             num of weights: %d" % w.size,
                  "                %s  bias ..." % (" " * len(l.name)),
                  "             num of bias: %d" % bias.size,
                  "time for layer [%s]: %f seconds" % (l.name, time.time() - start)]
    data = b"".join(parts)
    ncio.atomic_write(output, data)
    _write_shapes(output, [(l.name, w, b, l) for l, w, b, _, _ in selected], idx_bits)
    if not quiet:
        print("\n\nlayer list: ", repr([l.name for l, *_ in selected]))
        print_lines(lines)
        print("")
        if idx_bits == 8:
            print("compact model saved as %s\n" % output)
        print("total time: %f s" % (time.time() - total_start))
        print("")
    return len(data)


def _format_name(idx_bits: int) -> str:
    return next(name for name, bits in FORMATS.items() if bits == idx_bits)


def _write_shapes(output: str, layers, idx_bits: int) -> None:
    """`<output>.shapes.json`: the format and, per layer, its name and weight/bias shapes."""
    record = {"kind": _SHAPES_KIND, "version": 1, "format": _format_name(idx_bits), "layers": [
        {"name": name, "weight": [int(d) for d in l.weight.shape],
         "bias": None if b is None else [int(d) for d in l.bias.shape],
         "legacy": bool(any(l.legacy))} for name, w, b, l in layers]}
    ncio.atomic_write(output + SHAPES_SUFFIX, json.dumps(record, indent=1) + "\n")


def _read_shapes(compact_file: str) -> tuple[str, dict] | None:
    path = compact_file + SHAPES_SUFFIX
    if not os.path.isfile(path):
        return None
    try:
        record = json.loads(ncio.read_input_bytes(path, "shapes record", 16 << 20).decode("utf-8"))
        ok = (isinstance(record, dict) and record.get("kind") == _SHAPES_KIND and record.get("format") in FORMATS
              and isinstance(record.get("layers"), list)
              and all(isinstance(l, dict) and isinstance(l.get("weight"), list) for l in record["layers"]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise CompactError(f"{path}: not a shapes record of a compact file (delete it to decode without the "
                           "shape check)")
    return path, record


def _check_shapes(compact_file: str, targets, idx_bits: int, prototxt: str) -> None:
    """Refuse a net whose layers differ from those the compact file was encoded from."""
    found = _read_shapes(compact_file)
    if found is None:
        return
    path, record = found
    fmt = _format_name(idx_bits)
    if record["format"] != fmt:
        other = "decode_compact48" if record["format"] == "4/8" else "decode_compact"
        raise CompactError(f"{compact_file}: was encoded in the other compact format, {record['format']} ({path}); "
                           f"this decoder reads {fmt}: use {other}")
    layers = record["layers"]
    if len(layers) != len(targets):
        raise CompactError(f"{compact_file}: was encoded from {len(layers)} layers with parameters ({path}), the net "
                           f"{prototxt} has {len(targets)}: the file does not match the net")
    for k, (enc, (name, tl)) in enumerate(zip(layers, targets)):
        for what, want in (("weight", enc["weight"]), ("bias", enc.get("bias"))):
            has = what in tl.blob_names
            got = list(getattr(tl, what).shape) if has else None
            if want is None and got is None:
                continue
            same = want is not None and got is not None and (
                list(want) == got or (enc.get("legacy") and int(np.prod(want)) == int(np.prod(got))))
            if not same:
                def show(s):
                    return "none" if s is None else fmt_shape(s)

                raise CompactError(f"{compact_file}: layer {k + 1} ('{enc.get('name', '?')}') was encoded with "
                                   f"{what} shape {show(want)} ({path}), the net {prototxt} has {show(got)} for "
                                   f"its layer '{name}': the file does not match the net")


def _decode_targets(net, prototxt: str) -> list[tuple[str, object]]:
    layers = []
    for name, tl in net.named_layers():
        if not tl.blob_names:
            continue
        if tl.type_name in _common.DNS_TYPES or tl.type_name in _common.INQ_TYPES:
            raise CompactError(f"layer '{name}' of {prototxt} is {tl.type_name}: decode_compact writes a normal "
                               "model, so give the normal net's prototxt (Convolution / InnerProduct layers)")
        if tl.type_name not in _common.PLAIN_WEIGHT_TYPES:
            raise CompactError(f"layer '{name}' of {prototxt} ({tl.type_name}, blobs "
                               f"[{', '.join(tl.blob_names)}]) is not supported: the compact format holds the "
                               f"weights and biases of {', '.join(sorted(_common.PLAIN_WEIGHT_TYPES))} layers only")
        layers.append((name, tl))
    return layers


def decode_compact(net_prototxt: str, compact_file: str, output: str, idx_bits: int = 4,
                   quiet: bool = False):
    """Decode a compact file into the normal net `net_prototxt` and save it as a .caffemodel.

    Returns the net."""
    _check_bits(idx_bits)
    require_files(net_prototxt, compact_file)
    refuse_overwrite(output, writes="the decoded caffemodel", net_prototxt=net_prototxt, compact_file=compact_file)
    net = build_target_net(net_prototxt)
    targets = _decode_targets(net, net_prototxt)
    _check_shapes(compact_file, targets, idx_bits, net_prototxt)
    data = ncio.read_input_bytes(compact_file, "compact file")
    try:
        return _decode_into(net, targets, data, net_prototxt, compact_file, output, idx_bits, quiet)
    except CompactError as e:  # (a caffemodel or a prototxt given as the compact file: say so)
        hint = ncio.other_file_hint(data, advice=False)
        if not hint:
            raise
        raise CompactError(f"{e}{hint}") from None


def _decode_into(net, targets, data: bytes, net_prototxt: str, compact_file: str, output: str, idx_bits: int,
                 quiet: bool):
    total_start = time.time()
    lines, off = [], 0
    for name, tl in targets:
        stamp = _now()
        start = time.time()
        w, off = decode_blob(data, off, tl.weight.numel(), idx_bits, f"layer '{name}' weight", compact_file)
        has_bias = "bias" in tl.blob_names
        if not has_bias and off + 4 <= len(data) and struct.unpack_from("<i", data, off)[0] != 0:
            raise CompactError(f"{compact_file}: layer '{name}' has no bias in {net_prototxt}, but its bias "
                               f"record (byte {off}) is not empty: the file does not match the net")
        b, off = decode_blob(data, off, tl.bias.numel() if has_bias else 0, idx_bits,
                             f"layer '{name}' bias", compact_file)
        with torch.no_grad():
            tl.weight.copy_(torch.from_numpy(w).reshape(tl.weight.shape))
            if has_bias:
                tl.bias.copy_(torch.from_numpy(b).reshape(tl.bias.shape))
        lines += ["decoding layer [%s] weight ... %s" % (name, stamp),
                  "                %s  bias ..." % (" " * len(name)),
                  "time for layer [%s]: %f seconds" % (name, time.time() - start)]
    if off != len(data):
        raise CompactError(f"{compact_file}: {len(data) - off} bytes are left after the records of the "
                           f"{len(targets)} layers of {net_prototxt}: the file holds more layers than the net "
                           "(or is the other compact format)")
    net.save(output)
    if not quiet:
        print("")
        print_lines(lines)
        print("")
        print("Model decoded. Saved as %s [time: %f s] " % (output, time.time() - total_start))
        print("")
    return net


ENCODE_USAGE = """

convert dns_inq model to compact format (deep compression)
{extra}
Usage:
    {script} <src_net.prototxt> <src_model.caffemodel> <target_model.binary>
    netcompress {cmd} <src_net.prototxt> <src_model.caffemodel> <target_model.binary>

"""

DECODE_USAGE = """

decode compact binary model to normal caffemodel
{extra}
Usage:
    {script} <src_net.prototxt> <compact_model.binary> <normal_model.caffemodel>
    netcompress {cmd} <src_net.prototxt> <compact_model.binary> <normal_model.caffemodel>

"""

_EXTRA48 = "\nweight/bias bits: 4\nindex bits:       8\n"


def _encode_main(argv, idx_bits: int, cmd: str) -> int:
    usage = ENCODE_USAGE.format(script=cmd + ".py", cmd=cmd, extra=_EXTRA48 if idx_bits == 8 else "")

    def body(a: list[str]) -> int:
        encode_compact(a[0], a[1], a[2], idx_bits)
        return 0
    return run_main(body, usage, argv, 3)


def _decode_main(argv, idx_bits: int, cmd: str) -> int:
    usage = DECODE_USAGE.format(script=cmd + ".py", cmd=cmd, extra=_EXTRA48 if idx_bits == 8 else "")

    def body(a: list[str]) -> int:
        decode_compact(a[0], a[1], a[2], idx_bits)
        return 0
    return run_main(body, usage, argv, 3)


def encode_compact_main(argv: Sequence[str] | None = None) -> int:
    """`encode_compact.py <src_net.prototxt> <src_model.caffemodel> <target_model.binary>` (4/4)"""
    return _encode_main(argv, 4, "encode_compact")


def decode_compact_main(argv: Sequence[str] | None = None) -> int:
    """`decode_compact.py <src_net.prototxt> <compact_model.binary> <normal_model.caffemodel>` (4/4)"""
    return _decode_main(argv, 4, "decode_compact")


def encode_compact48_main(argv: Sequence[str] | None = None) -> int:
    """`encode_compact48.py <src_net.prototxt> <src_model.caffemodel> <target_model.binary>` (4/8)"""
    return _encode_main(argv, 8, "encode_compact48")


def decode_compact48_main(argv: Sequence[str] | None = None) -> int:
    """`decode_compact48.py <src_net.prototxt> <compact_model.binary> <normal_model.caffemodel>` (4/8)"""
    return _decode_main(argv, 8, "decode_compact48")
