"""`snip_prune` (recipes-spec 2.1, 5.5): SNIP pruning at initialisation, as mil-ad/snip does it.

    snip_prune <train.prototxt> [<weights>] <out.prototxt> <out_raw.caffemodel> --keep-ratio K
               [--batches 1] [--reinit xavier_normal|none] [--layers all|REGEX] [--seed S]

1. The chosen layers (every Convolution and InnerProduct of the TRAIN net, or those whose whole
   name matches REGEX; MaskedConvolution / MaskedInnerProduct layers are taken as they are) become
   MaskedConvolution / MaskedInnerProduct with all-ones mask fillers, in the DNS blob layout
   `[W, b, W_mask, b_mask]`.
2. The TRAIN net is built (fillers seeded with S) and `weights` copied in when given; its data
   layer provides `--batches` batches from the start of its source.
3. Each weight's connection sensitivity |g · (W⊙M)| with g = ∂L/∂(W⊙M), L the net's losses with
   weight 1, their mean over the batches (`netcompress.recipes.snip.connection_sensitivity`).
   `--reinit xavier_normal` (the default, as mil-ad) scores Xavier-normal draws seeded with S on a
   copy: the written model keeps the net's own weights.
4. One global top-k over all chosen layers: k = int(N · K), masks = (s / Σs >= the k-th largest),
   so ties at the threshold can keep more than k. Biases are never masked (bias masks all 1).
   Pruned weights are set to 0 in the written raw model.

Prints the kept counts in dns_to_normal's format. `out.prototxt` is the input net (both phases)
with the chosen layers converted; train it as it is (the masked layers keep the pruned weights out
of the forward pass, so they stay pruned), then convert with `dns_to_normal`.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import secrets
import sys
from typing import Sequence

import torch

from .. import io as ncio
from ..cliargs import seed_arg
from ..errors import NetcompressError
from ..proto import caffe_pb2 as pb
from ..recipes.snip import apply_masks, connection_sensitivity, keep_masks
from ._common import (KeptTotals, ToolError, final_block, layer_block, net_error_text, print_lines, refuse_overwrites,
                      require_files, run_tool)

__all__ = ["SnipResult", "snip_prune", "masked_net_param", "main"]

_MASKED = {"Convolution": ("MaskedConvolution", "dns_convolution_param"),
           "InnerProduct": ("MaskedInnerProduct", "dns_inner_product_param")}
_ALREADY = {"MaskedConvolution", "MaskedInnerProduct"}


@dataclasses.dataclass
class SnipResult:
    """What snip_prune computed: per chosen layer (net order) its scores and new weight mask."""

    layers: list[str]
    scores: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    k: int
    weights: int       # N, the weights scored
    kept: int          # weights kept (>= k only with ties at the threshold)
    seed: int
    totals: KeptTotals
    lines: list[str]


def masked_net_param(param: pb.NetParameter, names: Sequence[str]) -> pb.NetParameter:
    """`param` with layers `names` turned into Masked* layers with all-ones mask fillers."""
    out = pb.NetParameter()
    out.CopyFrom(param)
    chosen = set(names)
    for lp in out.layer:
        if lp.name not in chosen:
            continue
        if lp.type in _MASKED:
            lp.type, field = _MASKED[lp.type]
            mp = getattr(lp, field)
            for f in ("weight_mask_filler", "bias_mask_filler"):
                if not mp.HasField(f):
                    getattr(mp, f).CopyFrom(pb.FillerParameter(type="constant", value=1.0))
    return out


def _train_layers(param: pb.NetParameter) -> list[pb.LayerParameter]:
    from ..net import filter_net

    state = pb.NetState(phase=pb.TRAIN)
    if param.HasField("state"):
        state.CopyFrom(param.state)
        state.phase = pb.TRAIN
    return list(filter_net(param, state, verbose=False).layer)


def _choose(param: pb.NetParameter, pattern: str, path: str) -> list[str]:
    if pattern == "all":
        rx = None
    else:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ToolError(f"--layers: '{pattern}' is not a regular expression: {e}") from None
    names = []
    for lp in _train_layers(param):
        if lp.type not in _MASKED and lp.type not in _ALREADY:
            continue
        if rx is None or rx.fullmatch(lp.name):
            names.append(lp.name)
    if not names:
        which = "any" if rx is None else f"a name matching '{pattern}' in"
        raise ToolError(f"{path}: no Convolution or InnerProduct layer with {which} the TRAIN net: nothing "
                        "to prune")
    return names


def snip_prune(train_prototxt: str, weights: str | None, out_prototxt: str, out_model: str,
               keep_ratio: float, batches: int = 1, reinit: str = "xavier_normal", layers: str = "all",
               seed: int | None = None, device: str = "cpu", quiet: bool = False) -> SnipResult:
    """Prune `train_prototxt` (with `weights`) by SNIP and write the masked net and raw model."""
    from ..net import Net, check_memory

    require_files(train_prototxt, *([weights] if weights else []))
    refuse_overwrites((out_prototxt, out_model), writes=(None, "the masked caffemodel"), train_prototxt=train_prototxt,
                      weights=weights)
    if not 0 < keep_ratio <= 1:
        raise ToolError(f"--keep-ratio must lie in (0, 1], got {keep_ratio:g}")
    if batches < 1:
        raise ToolError(f"--batches must be at least 1, got {batches}")
    if reinit not in ("xavier_normal", "none"):
        raise ToolError(f"--reinit takes xavier_normal or none, got '{reinit}'")
    if seed is None:
        seed = secrets.randbits(31)
    param = ncio.read_net(train_prototxt)
    names = _choose(param, layers, train_prototxt)
    masked = masked_net_param(param, names)
    try:
        net = Net(masked, phase=pb.TRAIN, seed=seed, device=device, verbose=False, source=train_prototxt)
        check_memory([net])
    except NetcompressError as e:
        raise ToolError(f"cannot build the TRAIN net of {train_prototxt} (its layers {', '.join(names)} "
                        f"masked): {net_error_text(e, train_prototxt)}") from None
    if weights:
        net.copy_from(weights)
    if not any(t for t in net.loss_weights):
        raise ToolError(f"{train_prototxt}: the TRAIN net has no loss layer; SNIP scores its gradient")
    gen = None
    if reinit == "xavier_normal":
        gen = torch.Generator()
        gen.manual_seed(seed)
    scores = connection_sensitivity(net, names, batches, reinit=gen)
    masks, k = keep_masks(scores, keep_ratio)
    apply_masks(net, masks)

    totals = KeptTotals()
    lines: list[str] = []
    kept = 0
    for n in names:
        layer = net.layer(n)
        wk, wn, bk, bn = layer.kept_counts()
        kept += wk
        has_b = layer.bias_term
        lines += layer_block(n, wk, wn, bk if has_b else None, bn if has_b else None)
        totals.add(wk, wn, bk if has_b else None, bn if has_b else None)
    lines += final_block(totals)
    n_weights = sum(int(s.numel()) for s in scores.values())
    lines += [f"SNIP: kept {kept} of {n_weights} weights of {len(names)} layers (keep ratio {keep_ratio:g}, "
              f"k = {k}); scored on {batches} TRAIN batch{'es' if batches > 1 else ''}, "
              f"{'Xavier-normal draws' if gen is not None else 'the net weights'}, seed {seed}"]
    ncio.write_text_proto(out_prototxt, masked)
    ncio.write_caffemodel(out_model, net.to_proto())
    lines += [f"Masked net saved as {out_prototxt}, raw model (DNS layout) as {out_model}"]
    if not quiet:
        print_lines(lines)
    return SnipResult(names, scores, {n: net.layer(n).weight_mask.detach().clone() for n in names}, k,
                      n_weights, kept, seed, totals, lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`snip_prune <train.prototxt> [<weights>] <out.prototxt> <out_raw.caffemodel> --keep-ratio K ...`"""
    p = argparse.ArgumentParser(
        prog="netcompress snip_prune",
        description="SNIP (Lee et al. 2019, as mil-ad/snip): score each Convolution/InnerProduct weight by "
                    "its connection sensitivity |g * w| on real TRAIN batches, keep the global top K, and "
                    "write the net with MaskedConvolution/MaskedInnerProduct layers and the raw model "
                    "[W, b, W_mask, b_mask] (convert a trained one with dns_to_normal). Biases are never masked.")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="<train.prototxt> [<weights.caffemodel>] <out.prototxt> <out_raw.caffemodel>")
    p.add_argument("--keep-ratio", type=float, required=True, help="fraction of the weights kept, e.g. 0.02")
    p.add_argument("--batches", type=int, default=1, help="TRAIN batches to score on (default 1, as SNIP)")
    p.add_argument("--reinit", choices=["xavier_normal", "none"], default="xavier_normal",
                   help="score Xavier-normal draws on a copy (default, as mil-ad) or the weights themselves")
    p.add_argument("--layers", default="all",
                   help="'all' Convolution/InnerProduct layers, or a regular expression the whole layer name matches")
    p.add_argument("--seed", type=seed_arg(), default=None,
                   help="seeds the fillers, the data layer and the Xavier draws (default: random, printed)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")

    def run(a: argparse.Namespace) -> int:
        if len(a.files) not in (3, 4):
            p.print_usage(sys.stderr)
            print(f"Error: expected 3 or 4 files (<train.prototxt> [<weights>] <out.prototxt> "
                  f"<out_raw.caffemodel>), got {len(a.files)}", file=sys.stderr)
            return 2
        from ..device import device_from_gpu_flag

        train, *rest = a.files
        weights = rest.pop(0) if len(rest) == 3 else None
        out_prototxt, out_model = rest
        snip_prune(train, weights, out_prototxt, out_model, a.keep_ratio, a.batches, a.reinit, a.layers,
                   a.seed, device=str(device_from_gpu_flag(a.gpu)))
        return 0
    return run_tool(p, argv, run)
