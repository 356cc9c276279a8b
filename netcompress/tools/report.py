"""`netcompress report`: how much of a model is kept, and how big its stored forms are.

Kept counts follow dns_to_normal (reference-semantics 5.1): weights and biases together, by count.
A raw DNS model (masks stored) counts mask == 1 entries; every other layer (normal, INQ raw, or a
DNS prototxt with a normal model) counts nonzero values, since an INQ mask marks quantized entries,
not pruned ones. The per-layer block and the final lines are dns_to_normal's, so the figures agree.

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
from ..errors import NetcompressError
from ._common import (KeptTotals, ModelLayer, ToolError, final_block, layer_block,
                      load_source_model, print_lines, require_files)
from .compact import sniff_format

__all__ = ["model_report", "main"]


def _layer_counts(l: ModelLayer) -> dict:
    if l.kind == "dns" and l.has_masks:
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


def model_report(prototxt: str, model: str, compact: Sequence[str] = ()) -> dict:
    """The report as a dict (what `--json` writes)."""
    require_files(prototxt, model, *compact)
    src = load_source_model(prototxt, model)
    if src.missing:
        name, t = src.missing[0]
        raise ToolError(f"{model} stores no blobs for layer '{name}' ({t}) of {prototxt}: the model does not "
                        "belong to this net")
    layers, skipped = [], []
    totals = KeptTotals()
    for l in src.layers:
        if not l.is_weight_layer:
            skipped.append({"name": l.name, "type": l.type, "count": int(sum(b.size for b in l.blobs))})
            continue
        c = _layer_counts(l)
        totals.add(c["w_kept"], c["w_count"], c["b_kept"], c["b_count"])
        layers.append(c)
    dense = 4 * totals.total
    record_layers = [(c["name"], c["w_count"], c["b_count"] or 0) for c in layers]
    compacts = []
    for path in compact:
        with open(path, "rb") as f:
            data = f.read()
        size = len(data)
        compacts.append({"path": path, "bytes": size, "formats": sniff_format(data, record_layers),
                         "ratio": dense / size if size else None})
    msize = os.path.getsize(model)
    return {
        "net": prototxt, "model": model, "layers": layers, "not_counted": skipped,
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
                    "prints them), and the sizes of its dense, caffemodel and compact forms.")
    p.add_argument("net", help="the net prototxt the model belongs to (DNS, INQ or normal)")
    p.add_argument("model", help=".caffemodel (raw DNS: masks are counted; otherwise nonzero values)")
    p.add_argument("--compact", nargs="+", default=[], metavar="FILE", help="compact files to size up")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        r = model_report(a.net, a.model, a.compact)
        print_report(r)
        if a.json:
            ncio.atomic_write(a.json, json.dumps(r, indent=2) + "\n")
    except (NetcompressError, OSError) as e:
        sys.stdout.flush()
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0
