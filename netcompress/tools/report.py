"""`netcompress report`: how much of a model is kept, and how big its stored forms are.

Kept counts follow dns_to_normal (reference-semantics 5.1): weights and biases together, by count.
A raw DNS model (masks stored) counts mask == 1 entries; every other layer (normal, INQ raw, or a
DNS prototxt with a normal model) counts nonzero values, since an INQ mask marks quantized entries,
not pruned ones. The per-layer block and the final lines are dns_to_normal's, so the figures agree.

A Quant layer's raw model ([W, (b), W_mask, (b_mask), w_alpha], QuantConvolution/QuantInnerProduct)
counts the non-zero quantized weights α_c·q (pruned entries and weights that round to the code 0 are
not kept) and its biases by mask. The weights kept per layer type (Convolution, InnerProduct, ...)
follow the per-layer blocks.

Bit budget (`--check-bits [SPEC]`): every weight layer's effective weights must be integers in
[-2^(b-1), 2^(b-1) - 1] times one scale per output channel (recipes-spec 4.6: the MicroNet weight
quantizer; a merged integer deploy net has scale 1). A Quant layer's budget is its own bitwidth, checked
on the codes of its stored scales; any other layer (a deploy net, a normal model) has its scale found
per channel from its values. SPEC sets b like micronet_score's --weight-bits: `default=4,last=6` (the
default: 4 bits, 6 for the last weight layer) with keys first, last, default or a layer name; a layer
name also overrides a Quant layer's bitwidth. Violating layers are named, and the command exits 1.

Sizes: the dense float32 form (count x 4 bytes), the .caffemodel file, and each compact file given
(with the compact format it parses as against this net).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

from .. import io as ncio
from ._common import (KeptTotals, ModelLayer, ToolError, final_block, layer_block, load_source_model,
                      numbered_inputs, print_lines, refuse_overwrites, require_files, run_tool)
from .compact import sniff_format

__all__ = ["model_report", "main"]


def _layer_counts(l: ModelLayer) -> dict:
    if l.kind == "quant" and l.w_alpha is not None:
        wk = int(np.count_nonzero(l.codes))
        bk = int(np.count_nonzero(l.bias_mask == 1)) if l.bias_term else None
        by = "quantized"
    elif l.kind in ("dns", "quant") and l.has_masks:
        wk = int(np.count_nonzero(l.weight_mask == 1))
        bk = int(np.count_nonzero(l.bias_mask == 1)) if l.bias_term else None
        by = "mask"
    else:
        wk = int(np.count_nonzero(l.weight))
        bk = int(np.count_nonzero(l.bias)) if l.bias_term else None
        by = "nonzero"
    return {"name": l.name, "type": l.type, "counted_by": by,
            "w_kept": wk, "w_count": int(l.weight.size),
            "b_kept": bk, "b_count": int(l.bias.size) if l.bias_term else None}


_PLAIN_TYPE = {"conv": "Convolution", "ip": "InnerProduct"}


def _rows(w: np.ndarray, transposed: bool) -> np.ndarray:
    """One output channel per row."""
    return w.reshape(-1, w.shape[-1]).T if transposed else w.reshape(w.shape[0], -1)


def _row_in_budget(v: np.ndarray, low: int, high: int) -> tuple[bool, float]:
    """Whether the non-zero values v are one scale a > 0 times integers in [low, high]; returns (ok, a).

    The largest magnitude must be a times some code m (1 <= m <= max(|low|, high)); every candidate m is
    tried, all at once, and the values divided by max|v|/m must lie within 1e-4 of integers in range."""
    v = v[v != 0].astype(np.float64)
    if v.size == 0:
        return True, 0.0
    if not np.all(np.isfinite(v)):
        return False, float("nan")
    amax = float(np.abs(v).max())
    ms = np.arange(1, max(-low, high) + 1, dtype=np.float64)
    for chunk in np.array_split(ms, max(1, len(ms) // 64)):
        q = v[None, :] * (chunk[:, None] / amax)
        r = np.rint(q)
        good = np.all((np.abs(q - r) <= 1e-4) & (r >= low) & (r <= high), axis=1)
        if good.any():
            return True, amax / float(chunk[np.argmax(good)])
    return False, float("nan")


def check_bits(l: ModelLayer, bits: int) -> dict:
    """The bit-budget check of one weight layer (module docstring)."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    out = {"name": l.name, "type": l.type, "bits": bits, "low": low, "high": high}
    if l.kind == "quant" and l.w_alpha is not None:
        alpha = l.w_alpha
        codes = _rows(l.codes, l.transposed_ip)
        bad = [int(c) for c in np.flatnonzero(~np.isfinite(alpha) | (alpha < 0)
                                              | (codes < low).any(axis=1) | (codes > high).any(axis=1))]
        nz = codes[codes != 0]
        out.update(how=f"{l.bitwidth}-bit codes of the stored scales", channels=int(alpha.size), bad=bad,
                   code_min=int(nz.min()) if nz.size else 0, code_max=int(nz.max()) if nz.size else 0)
    else:
        w, _ = l.effective()
        rows = _rows(np.asarray(w), l.transposed_ip)
        integer = bool(np.all(rows == np.rint(rows)))
        bad, codes = [], []
        for c, row in enumerate(rows):
            ok, a = (bool(np.all((row >= low) & (row <= high))), 1.0) if integer else _row_in_budget(row, low, high)
            if not ok:
                bad.append(c)
            elif a > 0:
                codes.append(np.rint(row / a))
        allc = np.concatenate(codes) if codes else np.zeros(0)
        allc = allc[allc != 0]
        out.update(how="integers" if integer else "a per-channel scale found from the values",
                   channels=int(rows.shape[0]), bad=bad,
                   code_min=int(allc.min()) if allc.size else 0, code_max=int(allc.max()) if allc.size else 0)
    out["ok"] = not out["bad"]
    return out


def _budgets(layers: list[ModelLayer], spec: str | None) -> dict[str, int]:
    from .micronet import DEFAULT_WEIGHT_BITS, parse_bits

    given = parse_bits(spec, DEFAULT_WEIGHT_BITS, "--check-bits")
    names = [l.name for l in layers]
    unknown = [k for k in given if k not in ("first", "last", "default") and k not in names]
    if unknown:
        raise ToolError(f"--check-bits: {', '.join(unknown)} is not a weight layer of the net (they are: "
                        f"{', '.join(names)})")
    out = {}
    for i, l in enumerate(layers):
        if l.name in given:
            out[l.name] = given[l.name]
        elif l.kind == "quant" and l.bitwidth:
            out[l.name] = l.bitwidth
        elif i == 0 and "first" in given:
            out[l.name] = given["first"]
        elif i == len(layers) - 1 and "last" in given:
            out[l.name] = given["last"]
        else:
            out[l.name] = given["default"]
    return out


def model_report(prototxt: str, model: str, compact: Sequence[str] = (), check: str | None = None) -> dict:
    """The report as a dict (what `--json` writes). `check`: None (no bit-budget check) or the
    --check-bits SPEC ("" for the defaults)."""
    require_files(prototxt, model, *compact)
    src = load_source_model(prototxt, model)
    if src.missing:
        name, t = src.missing[0]
        raise ToolError(f"{model} stores no blobs for layer '{name}' ({t}) of {prototxt}: the model does not "
                        "belong to this net")
    layers, skipped = [], []
    totals = KeptTotals()
    by_type: dict[str, list[int]] = {}
    weight_layers = []
    for l in src.layers:
        if not l.is_weight_layer:
            skipped.append({"name": l.name, "type": l.type, "count": int(sum(b.size for b in l.blobs))})
            continue
        c = _layer_counts(l)
        totals.add(c["w_kept"], c["w_count"], c["b_kept"], c["b_count"])
        layers.append(c)
        weight_layers.append(l)
        acc = by_type.setdefault(l.type, [0, 0])
        acc[0] += c["w_kept"]
        acc[1] += c["w_count"]
    bits = None
    if check is not None:
        budgets = _budgets(weight_layers, check or None)
        bits = [check_bits(l, budgets[l.name]) for l in weight_layers]
    dense = 4 * totals.total
    record_layers = [(c["name"], c["w_count"], c["b_count"] or 0) for c in layers]
    compacts = []
    for path in compact:
        data = ncio.read_input_bytes(path, "compact file")
        size = len(data)
        compacts.append({"path": path, "bytes": size, "formats": sniff_format(data, record_layers),
                         "ratio": dense / size if size else None})
    msize = os.path.getsize(model)
    return {
        "net": prototxt, "model": model, "layers": layers, "not_counted": skipped,
        "weights_by_type": {t: {"kept": k, "count": n} for t, (k, n) in by_type.items()},
        "bits": bits,
        "total": {"kept": totals.kept, "count": totals.total,
                  "percent": totals.percent if totals.total else None,
                  "compression_rate": totals.rate if totals.kept else None},
        "sizes": {"dense_bytes": dense, "caffemodel_bytes": msize,
                  "caffemodel_ratio": dense / msize if msize else None, "compact": compacts},
    }


def _ratio(x: float | None) -> str:
    return "-" if x is None else "%.2fx" % x


def print_report(r: dict, out=None) -> None:
    out = out or sys.stdout
    lines = [f"Model {r['model']} (net {r['net']})"]
    totals = KeptTotals(r["total"]["count"], r["total"]["kept"])
    for c in r["layers"]:
        lines += layer_block(c["name"], c["w_kept"], c["w_count"], c["b_kept"], c["b_count"])
    fb = final_block(totals)
    lines += fb if fb else [" ", "Final Statistics: %d/ %d kept" % (totals.kept, totals.total)]
    for s in r["not_counted"]:
        lines.append(f"not counted: layer '{s['name']}' ({s['type']}, {s['count']} values)")
    if r["weights_by_type"]:
        lines.append(" ")
        lines.append("Weights kept by layer type:")
        for t, c in r["weights_by_type"].items():
            lines.append("  %s: %d/%d (%f %%) kept" % (t, c["kept"], c["count"],
                                                      100.0 * c["kept"] / c["count"] if c["count"] else float("nan")))
    if r.get("bits") is not None:
        lines.append(" ")
        lines.append("Bit budget (weights: integers in [-2^(b-1), 2^(b-1)-1] times one scale per output channel):")
        width = max((len(b["name"]) for b in r["bits"]), default=0)
        for b in r["bits"]:
            where = f"  {b['name']:<{width}}  {b['bits']:>2} bits [{b['low']}, {b['high']}]"
            if b["ok"]:
                lines.append(f"{where}  ok: codes in [{b['code_min']}, {b['code_max']}], {b['channels']} channels "
                             f"({b['how']})")
            else:
                shown = ", ".join(map(str, b["bad"][:8])) + (", ..." if len(b["bad"]) > 8 else "")
                lines.append(f"{where}  EXCEEDED in {len(b['bad'])} of {b['channels']} channels ({shown}; "
                             f"{b['how']})")
    lines.append(" ")
    lines.append("Sizes (ratio: dense float32 size / size):")
    sz = r["sizes"]
    rows = [(f"dense float32 ({r['total']['count']} x 4 bytes)", sz["dense_bytes"], "1.00x"),
            (f"caffemodel {r['model']}", sz["caffemodel_bytes"], _ratio(sz["caffemodel_ratio"]))]
    for c in sz["compact"]:
        fmt = "/".join(c["formats"]) if c["formats"] else "unknown format: does not match this net"
        rows.append((f"compact {c['path']} ({fmt})", c["bytes"], _ratio(c["ratio"])))
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        lines.append(f"  {a:<{width}}  {b:>12d} bytes  {c:>9}")
    print_lines(lines, out)


def main(argv: Sequence[str] | None = None) -> int:
    """`report <net.prototxt> <model.caffemodel> [--compact FILE ...] [--json OUT]`"""
    p = argparse.ArgumentParser(
        prog="netcompress report",
        description="Per-layer and total kept counts and compression rate of a model (as dns_to_normal "
                    "prints them), the weights kept per layer type, the sizes of its dense, caffemodel and "
                    "compact forms, and (--check-bits) whether every weight is within its bit budget.")
    p.add_argument("net", help="the net prototxt the model belongs to (DNS, INQ, Quant, normal or an integer "
                               "deploy net)")
    p.add_argument("model", help=".caffemodel (raw DNS: masks are counted; raw Quant: non-zero quantized "
                                 "weights; otherwise nonzero values)")
    p.add_argument("--compact", nargs="+", default=[], metavar="FILE", help="compact files to size up")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--check-bits", nargs="?", const="", default=None, metavar="SPEC",
                   help="check that every weight is an integer in [-2^(b-1), 2^(b-1)-1] times a per-channel "
                        "scale; exit 1 naming the layers that are not. SPEC: bits as micronet_score's "
                        "--weight-bits (default=4,last=6; a Quant layer's own bitwidth unless SPEC names it)")

    def run(a: argparse.Namespace) -> int:
        # (`--json model.caffemodel` replaced the model by its report)
        refuse_overwrites([a.json], writes=["the JSON report"], net=a.net, model=a.model,
                          **numbered_inputs("compact file", a.compact))
        r = model_report(a.net, a.model, a.compact, a.check_bits)
        print_report(r)
        if a.json:
            ncio.atomic_write(a.json, json.dumps(r, indent=2) + "\n")
        bad = [b for b in (r["bits"] or []) if not b["ok"]]
        if bad:
            raise ToolError("the bit budget is exceeded in " + "; ".join(
                f"layer '{b['name']}' ({b['type']}, {b['bits']} bits: {len(b['bad'])} of {b['channels']} "
                "channels)" for b in bad))
        return 0
    return run_tool(p, argv, run)
