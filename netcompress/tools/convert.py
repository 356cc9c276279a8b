"""Model conversions of the reference's compression_scripts (reference-semantics 5.1-5.4).

- `dns_to_normal`: a raw DNS model ([W, b, W_mask, b_mask]) into a normal net: W where mask == 1,
  else 0; the same for b; prints the kept statistics.
- `inq_to_normal`: a raw INQ model into a normal net: W and b copied (they hold the quantized
  values already).
- `model2INQ_raw`: a raw DNS model (pruned weights zeroed, DNS masks copied) or a normal model
  (masks all ones) into an INQ net, ready for INQ training.
- `parse_model`: a binary .caffemodel as protobuf text.

Same arguments and printed lines as the reference scripts, but (Decision 7) layers are chosen by
type and blob layout, every layer with parameters in the target must receive values, and every
error exits non-zero with a message naming the file and layer.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from ..net import Net
from ._common import (KeptTotals, ModelLayer, SourceModel, ToolError,
                      build_target_net, final_block, fmt_shape, layer_block, load_source_model,
                      print_lines, refuse_overwrite, require_files, run_main, kind_of,
                      suspicious_values)

__all__ = ["dns_to_normal", "inq_to_normal", "model2inq_raw", "parse_model", "ConversionResult",
           "dns_to_normal_main", "inq_to_normal_main", "model2INQ_raw_main", "parse_model_main"]


@dataclasses.dataclass
class LayerStats:
    name: str
    w_kept: int
    w_count: int
    b_kept: int | None
    b_count: int | None


@dataclasses.dataclass
class ConversionResult:
    """What a conversion did: the per-layer statistics (masked source layers) and every layer
    written, in source order."""

    stats: list[LayerStats]
    layers: list[str]
    totals: KeptTotals


def _stats_of(l: ModelLayer) -> LayerStats:
    wm, bm = l.weight_mask, l.bias_mask
    bk = int(np.count_nonzero(bm == 1)) if bm is not None else None
    return LayerStats(l.name, int(np.count_nonzero(wm == 1)), int(wm.size), bk,
                      int(bm.size) if bm is not None else None)


class _Writer:
    """Collects (layer, blob index, values) for the target net, checking every shape first."""

    def __init__(self, net, src: SourceModel, target_prototxt: str):
        self.net, self.src, self.target_prototxt = net, src, target_prototxt
        self.writes: list[tuple[str, int, np.ndarray]] = []
        self.filled: set[str] = set()

    def target(self, l: ModelLayer):
        if not self.net.has_layer(l.name):
            raise ToolError(f"layer '{l.name}' ({l.type}) of {self.src.model} has parameters, but the "
                            f"target net {self.target_prototxt} has no layer '{l.name}' (TEST phase): "
                            "the nets do not match")
        return self.net.layer(l.name)

    def put(self, l: ModelLayer, index: int, values: np.ndarray, legacy: bool, what: str) -> None:
        tl = self.net.layer(l.name)
        t = getattr(tl, tl.blob_names[index])
        shape = tuple(t.shape)
        if tuple(values.shape) != shape and not (legacy and values.size == t.numel()):
            raise ToolError(f"layer '{l.name}': the target net {self.target_prototxt} holds {what} of shape "
                            f"{fmt_shape(shape)}, the source model {self.src.model} gives "
                            f"{fmt_shape(values.shape)}: the nets do not match")
        self.writes.append((l.name, index, np.asarray(values, dtype=np.float32).reshape(shape)))
        self.filled.add(l.name)

    def expect_blobs(self, l: ModelLayer, names: Sequence[str], why: str) -> None:
        tl = self.net.layer(l.name)
        if list(tl.blob_names) != list(names):
            raise ToolError(f"layer '{l.name}': the target net {self.target_prototxt} has a {tl.type_name} "
                            f"layer with blobs [{', '.join(tl.blob_names)}], expected "
                            f"[{', '.join(names)}] {why}")

    def copy_all(self, l: ModelLayer) -> None:
        """A normal layer: every blob copied as it is."""
        tl = self.target(l)
        if len(tl.blob_names) != len(l.blobs):
            raise ToolError(f"layer '{l.name}': the source model {self.src.model} stores {len(l.blobs)} "
                            f"blob(s) for this {l.type} layer, the target net {self.target_prototxt}'s "
                            f"{tl.type_name} layer holds {len(tl.blob_names)} "
                            f"[{', '.join(tl.blob_names)}]: the nets do not match")
        for j, (b, lg) in enumerate(zip(l.blobs, l.legacy)):
            self.put(l, j, b, lg, f"blob {j} ({tl.blob_names[j]})")

    def check_complete(self) -> None:
        """Every target layer with parameters must have received values (none left at its fillers)."""
        in_source = {l.name for l in self.src.layers}
        for name, tl in self.net.named_layers():
            if not tl.blob_names or name in self.filled:
                continue
            if name in in_source:
                continue  # a plain source layer with no blobs to give; caught by copy_all
            raise ToolError(f"layer '{name}' ({tl.type_name}) of the target net {self.target_prototxt} has "
                            f"parameters, but the source model {self.src.model} gives it nothing (it would keep "
                            "its initial values): the nets do not match")

    def apply(self) -> None:
        with torch.no_grad():
            for name, index, values in self.writes:
                tl = self.net.layer(name)
                getattr(tl, tl.blob_names[index]).copy_(torch.from_numpy(values))


def _wb_names(bias: bool | None, masks: bool) -> list[str]:
    names = ["weight"] + (["bias"] if bias else [])
    if masks:
        names += ["weight_mask"] + (["bias_mask"] if bias else [])
    return names


def _check_missing(src: SourceModel) -> None:
    if src.missing:
        name, type_name = src.missing[0]
        raise ToolError(f"{src.model} stores no blobs for layer '{name}' ({type_name}) of {src.prototxt}: "
                        "the model does not belong to this net (its values would be the fillers')")


def _refuse_inq_source(src: SourceModel, script: str, use: str) -> None:
    for l in src.layers:
        if l.kind == "inq":
            raise ToolError(
                f"{src.prototxt} declares layer '{l.name}' as {l.type}: {src.model} is an INQ raw model, whose "
                f"masks mark quantized weights (0 = quantized), not pruned ones. {script} would zero every "
                f"quantized weight; {use}")


def _convert(mode: str, src_prototxt: str, src_model: str, target_prototxt: str,
             output: str | None = None) -> tuple[ConversionResult, Net]:
    """Check everything and fill the target net; nothing is printed or written yet."""
    require_files(src_prototxt, src_model, target_prototxt)
    if output is not None:
        refuse_overwrite(output, writes="the converted caffemodel", source_prototxt=src_prototxt,
                         source_model=src_model, target_prototxt=target_prototxt)
    src = load_source_model(src_prototxt, src_model)
    _check_missing(src)
    if mode == "dns_to_normal":
        _refuse_inq_source(src, "dns_to_normal", "convert it with inq_to_normal instead")
    elif mode == "model2INQ_raw":
        _refuse_inq_source(src, "model2INQ_raw",
                           "it is an INQ model already (train it further as it is, or convert it with "
                           "inq_to_normal first)")
        for l in src.layers:
            # INQ quantizes |w| to powers of two and reads its masks as 1 = not yet quantized: NaN or
            # infinite weights and masks other than 0/1 leave nothing meaningful to train.
            problems = suspicious_values(l)
            if problems:
                raise ToolError(f"{src_model}: layer '{l.name}': {problems[0]}: an INQ raw model cannot be made "
                                "from it (INQ quantizes the weights to powers of two and needs 0/1 masks)")
    net = build_target_net(target_prototxt)
    w = _Writer(net, src, target_prototxt)
    stats: list[LayerStats] = []
    totals = KeptTotals()
    for l in src.layers:
        tl = w.target(l)
        t_kind = kind_of(tl.type_name)
        masked_src = l.kind != "plain" and l.has_masks
        if mode in ("dns_to_normal", "inq_to_normal") and t_kind != "plain":
            raise ToolError(f"layer '{l.name}': the target net {target_prototxt} declares it as {tl.type_name}; "
                            f"{mode} writes a normal model, so give the normal net's prototxt")
        if mode == "model2INQ_raw" and t_kind == "dns":
            raise ToolError(f"layer '{l.name}': the target net {target_prototxt} declares it as {tl.type_name}; "
                            "model2INQ_raw writes an INQ raw model: give the INQ net (INQConvolution / "
                            "INQInnerProduct layers) or a normal one")
        if mode == "inq_to_normal" and l.kind == "dns" and l.has_masks:
            raise ToolError(f"layer '{l.name}' is a {l.type} layer of a raw DNS model in {src_model}: copying "
                            "its weights would bring the pruned ones back; convert it with dns_to_normal")
        if masked_src or t_kind == "inq":
            if not l.is_weight_layer:
                raise ToolError(f"layer '{l.name}': a {l.type} layer of the source cannot become the target's "
                                f"{tl.type_name} layer")
            w.expect_blobs(l, _wb_names(l.bias_term, t_kind != "plain"),
                           f"for the source's {l.type} layer (bias_term: {str(bool(l.bias_term)).lower()})")
            if mode == "inq_to_normal":
                wv, bv = l.weight, l.bias  # quantized values are stored as they are (5.2)
            elif masked_src:
                wv, bv = l.effective()
                s = _stats_of(l)
                stats.append(s)
                totals.add(s.w_kept, s.w_count, s.b_kept, s.b_count)
            else:
                wv, bv = l.weight, l.bias
            w.put(l, 0, wv, l.legacy[0], "the weights")
            if bv is not None:
                w.put(l, 1, bv, l.legacy[1], "the biases")
            if t_kind == "inq":
                nb = 2 if l.bias_term else 1
                if masked_src:
                    # DNS masks become INQ masks: 1 = not yet quantized (5.3)
                    w.put(l, nb, np.asarray(l.weight_mask, np.float32), l.legacy[nb], "the weight mask")
                    if l.bias_term:
                        w.put(l, 3, np.asarray(l.bias_mask, np.float32), l.legacy[3], "the bias mask")
                else:
                    tw = getattr(tl, tl.blob_names[nb])
                    w.put(l, nb, np.ones(tuple(tw.shape), np.float32), False, "the weight mask")
                    if l.bias_term:
                        tb = getattr(tl, tl.blob_names[3])
                        w.put(l, 3, np.ones(tuple(tb.shape), np.float32), False, "the bias mask")
        else:
            w.copy_all(l)
    w.check_complete()
    w.apply()
    return ConversionResult(stats, [l.name for l in src.layers], totals), net


def _print_stats(res: ConversionResult) -> None:
    for s in res.stats:
        print_lines(layer_block(s.name, s.w_kept, s.w_count, s.b_kept, s.b_count))


def dns_to_normal(dns_prototxt: str, dns_model: str, target_prototxt: str, output: str,
                  quiet: bool = False) -> ConversionResult:
    """Convert a raw DNS (or Guo CConvolution/CInnerProduct) model to a normal model (5.1)."""
    res, net = _convert("dns_to_normal", dns_prototxt, dns_model, target_prototxt, output)
    if not quiet:
        _print_stats(res)
    net.save(output)
    if not quiet:
        print_lines(final_block(res.totals))
        print("Model has been converted from DNS to normal, saved as %s" % output)
        print(" ")
    return res


def inq_to_normal(inq_prototxt: str, inq_model: str, target_prototxt: str, output: str,
                  quiet: bool = False) -> ConversionResult:
    """Convert a raw INQ model to a normal model: blobs 0 and 1 copied (5.2)."""
    res, net = _convert("inq_to_normal", inq_prototxt, inq_model, target_prototxt, output)
    if not quiet:
        print("")
        for name in res.layers:
            # Python 2's `print a, pad,` then `print "[done]"`: a softspace before and after the pad.
            print("converting layer [%s] ..." % name + " " + " " * max(0, 20 - len(name)) + " " + "[done]")
    net.save(output)
    if not quiet:
        print("")
        print("Success: Model has been converted from INQ to normal, saved as %s" % output)
        print(" ")
    return res


def model2inq_raw(src_prototxt: str, src_model: str, inq_prototxt: str, output: str,
                  quiet: bool = False) -> ConversionResult:
    """Convert a raw DNS model or a normal model into an INQ raw model (5.3)."""
    res, net = _convert("model2INQ_raw", src_prototxt, src_model, inq_prototxt, output)
    if not quiet:
        _print_stats(res)
    net.save(output)
    if not quiet:
        print_lines(final_block(res.totals))
        print("Model(%s) has been converted to INQ raw model, saved as %s" % (src_model, output))
        print(" ")
        print("Model %s is ready for INQ training." % output)
        print(" ")
    return res


def parse_model(model: str, output: str, quiet: bool = False) -> None:
    """Write a binary .caffemodel as protobuf text (5.4), as stored (no upgrade)."""
    require_files(model)
    refuse_overwrite(output, writes="the model's text dump", binary_model=model)
    if not quiet:
        print("Parsing binary caffemodel ...")
    param = ncio.read_caffemodel(model, upgrade=False)
    if not quiet:
        print("Saving file: %s ..." % output)
    # `print >> f, model` wrote str(model) and a newline
    ncio.atomic_write(output, ncio.text_proto(param) + "\n")
    if not quiet:
        print("Success: file saved as %s" % output)


# ----------------------------------------------------------------------------------------------
# Entry points (compression_scripts/*.py and `netcompress <command>`)
# ----------------------------------------------------------------------------------------------

DNS_TO_NORMAL_USAGE = """
Convert a DNS pruned (raw) model to a normal model: weights and biases whose mask is not 1 become 0.

Usage:
    dns_to_normal.py <dns_model.prototxt> <dns_model.caffemodel> <target.prototxt> <target.caffemodel>
    netcompress dns_to_normal <dns_model.prototxt> <dns_model.caffemodel> <target.prototxt> <target.caffemodel>
"""

INQ_TO_NORMAL_USAGE = """
Convert a quantized INQ raw model (size: A) to a normal model (size: B), (A ~= 2B).

Usage:
    inq_to_normal.py <inq_net.prototxt> <inq_raw.caffemodel> <target_net.prototxt> <output_target_normal.caffemodel>
    netcompress inq_to_normal <same arguments>

---- <inq_net.prototxt>:      the INQ net used for training.
---- <inq_raw.caffemodel>:    a model of <inq_net.prototxt>.
---- <target_net.prototxt>:   the normal net that was converted to <inq_net.prototxt>.
---- <output_target_normal.caffemodel>: the output model, for <target_net.prototxt>.
"""

MODEL2INQ_RAW_USAGE = """
Convert a normal model or a DNS pruned (raw) model to an INQ raw model, ready for INQ training.

Usage:
    model2INQ_raw.py <source_prototxt.prototxt> <source_model.caffemodel> <INQ_net.prototxt> <INQ_raw_output_model.caffemodel>
    netcompress model2INQ_raw <same arguments>
"""

PARSE_MODEL_USAGE = """
Convert a binary caffemodel to a human-readable text file.

Usage:
    parse_model.py <binary.caffemodel> <output.txt>
    netcompress parse_model <binary.caffemodel> <output.txt>
"""


def _returning_0(func):
    def body(args: list[str]) -> int:
        func(*args)
        return 0
    return body


def dns_to_normal_main(argv: Sequence[str] | None = None) -> int:
    """`dns_to_normal.py <dns.prototxt> <dns.caffemodel> <target.prototxt> <target.caffemodel>`"""
    return run_main(_returning_0(dns_to_normal), DNS_TO_NORMAL_USAGE, argv, 4)


def inq_to_normal_main(argv: Sequence[str] | None = None) -> int:
    """`inq_to_normal.py <inq.prototxt> <inq_raw.caffemodel> <target.prototxt> <target.caffemodel>`"""
    return run_main(_returning_0(inq_to_normal), INQ_TO_NORMAL_USAGE, argv, 4)


def model2INQ_raw_main(argv: Sequence[str] | None = None) -> int:  # noqa: N802 (the script's name)
    """`model2INQ_raw.py <src.prototxt> <src.caffemodel> <INQ.prototxt> <INQ_raw.caffemodel>`"""
    return run_main(_returning_0(model2inq_raw), MODEL2INQ_RAW_USAGE, argv, 4)


def parse_model_main(argv: Sequence[str] | None = None) -> int:
    """`parse_model.py <binary.caffemodel> <output.txt>`"""
    return run_main(_returning_0(parse_model), PARSE_MODEL_USAGE, argv, 2)
