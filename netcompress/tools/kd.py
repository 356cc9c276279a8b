"""Knowledge-distillation scripts (recipes-spec 5.5): `rename_layers` and `dump_logits`.

- `rename_layers` prefixes every layer and blob of a net and of its caffemodel (e.g. `t_`), so
  that a trained teacher can be pasted into a student's prototxt and loaded with
  `--weights student.caffemodel,teacher_t.caffemodel`. The tops of data layers (layers without
  bottoms: Data, Input, HDF5Data, ...) keep their names, because the student shares them; the
  data layers themselves are written unchanged, so the output is still a runnable net. Optionally
  every blob gets `param { lr_mult: 0 decay_mult: 0 }` (`--freeze`) and every BatchNorm a
  `use_global_stats` (`--bn-stats`).
- `dump_logits` runs a net over a data source and writes one of its blobs (the teacher's logits),
  with the data and labels it saw, to an HDF5 file that an `HDF5Data` layer reads back, plus the
  list file that `hdf5_data_param.source` names (transfer-set KD, seed 000).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Sequence

import numpy as np
import torch

from .. import io as ncio
from ..cliargs import require_int_flag
from ..graph import remove_splits
from ..layers.base import INT_MAX
from ..proto import caffe_pb2 as pb
from ._common import WEIGHT_TYPES, ToolError, refuse_overwrites, run_tool

__all__ = ["RenameReport", "rename_net", "rename_layers", "rename_layers_main", "dump_logits",
           "dump_logits_main", "BN_STATS"]

BN_STATS = ("keep", "global", "batch")
_LOSS_LIKE = ("Accuracy",)
# Types that hold blobs: one without stored blobs and without param specs cannot be frozen.
_BLOB_TYPES = WEIGHT_TYPES | {"Scale", "Bias", "PReLU", "Embed", "Parameter", "BatchNorm", "MixedPooling",
                              "MaskedConvolution", "MaskedInnerProduct", "QuantConvolution",
                              "QuantInnerProduct"}


# ----------------------------------------------------------------------------------------------
# rename_layers
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RenameReport:
    """What `rename_net` changed, for the printed summary and the tests."""

    layers: dict[str, str] = dataclasses.field(default_factory=dict)   # old -> new layer name
    blobs: dict[str, str] = dataclasses.field(default_factory=dict)    # old -> new blob name
    kept_blobs: list[str] = dataclasses.field(default_factory=list)
    data_layers: list[str] = dataclasses.field(default_factory=list)
    loss_layers: list[str] = dataclasses.field(default_factory=list)   # new names
    frozen: dict[str, int] = dataclasses.field(default_factory=dict)   # new name -> blobs frozen
    unfrozen: list[str] = dataclasses.field(default_factory=list)      # layers with no blob count
    batch_norm: list[str] = dataclasses.field(default_factory=list)    # new names


def _is_data_layer(lp: pb.LayerParameter) -> bool:
    # Layers without bottoms produce the net's data (Data, ImageData, HDF5Data, Input, DummyData,
    # MemoryData, Python data layers...): the student has the same ones.
    return len(lp.bottom) == 0


def _blob_maps(layers: Sequence[pb.LayerParameter], prefix: str, keep: set[str]):
    """Per layer, the new names of its bottoms and tops. Blobs are renamed as they are written:
    a kept blob written in place by a teacher layer (its own preprocessing) becomes prefixed from
    there on, so the teacher never overwrites the student's blob."""
    current: dict[str, str] = {b: b for b in keep}
    out = []
    for lp in layers:
        if _is_data_layer(lp):
            out.append(([], list(lp.top)))
            continue
        bottoms = [current.get(b, prefix + b) for b in lp.bottom]
        tops = []
        for t in lp.top:
            current[t] = prefix + t
            tops.append(prefix + t)
        out.append((bottoms, tops))
    return out


def rename_net(param: pb.NetParameter, prefix: str, keep: Sequence[str] = (), freeze: bool = False,
               bn_stats: str = "keep", blob_counts: dict[str, int] | None = None
               ) -> tuple[pb.NetParameter, RenameReport]:
    """`param` with every non-data layer and blob prefixed (see the module docstring).

    `keep`: more blob names to leave as they are, besides the tops of data layers. `blob_counts`
    (layer name -> number of blobs, from the caffemodel) says how many `param` specs `freeze`
    writes for a layer that has fewer.
    """
    if not prefix:
        raise ToolError("the prefix must not be empty")
    if bn_stats not in BN_STATS:
        raise ToolError(f"bn_stats must be one of {', '.join(BN_STATS)}, got '{bn_stats}'")
    blob_counts = blob_counts or {}
    report = RenameReport()
    kept: list[str] = []
    for lp in param.layer:
        if _is_data_layer(lp):
            kept += [t for t in lp.top if t not in kept]
    blobs = {b for lp in param.layer for b in (*lp.bottom, *lp.top)}
    unknown = [b for b in keep if b not in blobs]
    if unknown:  # (a misspelt name was kept silently, and its blob renamed)
        named = "--keep" if ncio.ADVICE.get() == "command line" else "keep"  # (rename_net is a Python API too)
        raise ToolError(f"no layer of the net reads or writes the blob{'s' * (len(unknown) > 1)} to keep ({named}) "
                        f"{', '.join(repr(b) for b in unknown)}; its blobs: {', '.join(sorted(blobs)[:12])}"
                        f"{', ...' if len(blobs) > 12 else ''}")
    kept += [b for b in keep if b not in kept]
    report.kept_blobs = kept
    out = pb.NetParameter()
    out.CopyFrom(param)
    maps = _blob_maps(param.layer, prefix, set(kept))
    for lp, (bottoms, tops) in zip(out.layer, maps):
        if _is_data_layer(lp):
            report.data_layers.append(lp.name)
            continue
        old = lp.name
        new = prefix + old
        report.layers[old] = new
        for old_b, new_b in zip(list(lp.bottom) + list(lp.top), bottoms + tops):
            if old_b != new_b:
                report.blobs.setdefault(old_b, new_b)
        lp.name = new
        del lp.bottom[:]
        lp.bottom.extend(bottoms)
        del lp.top[:]
        lp.top.extend(tops)
        for spec in lp.param:
            if spec.name:
                spec.name = prefix + spec.name
        if lp.type.endswith("Loss") or lp.type in _LOSS_LIKE:
            report.loss_layers.append(new)
        if freeze:
            n = max(len(lp.param), blob_counts.get(old, 0))
            if n == 0 and lp.type in _BLOB_TYPES:
                report.unfrozen.append(new)
            while len(lp.param) < n:
                lp.param.add()
            for spec in lp.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
            if n:
                report.frozen[new] = n
        if lp.type == "BatchNorm":
            report.batch_norm.append(new)
            if bn_stats != "keep":
                lp.batch_norm_param.use_global_stats = bn_stats == "global"
    return out, report



def rename_layers(in_prototxt: str, in_model: str, out_prototxt: str, out_model: str,
                  prefix: str = "t_", keep: Sequence[str] = (), freeze: bool = False,
                  bn_stats: str = "keep") -> RenameReport:
    """Rename `in_prototxt` and `in_model` with `prefix`; write both outputs atomically."""
    for p in (in_prototxt, in_model):
        if not os.path.isfile(p):
            raise ToolError(f"{p} does not exist!" if not os.path.exists(p) else f"{p} is not a file")
    refuse_overwrites((out_prototxt, out_model), writes=(None, "the caffemodel"), input_prototxt=in_prototxt,
                      input_model=in_model)
    net = ncio.read_net(in_prototxt)
    model = ncio.read_caffemodel(in_model)
    counts = {l.name: len(l.blobs) for l in model.layer}
    new_net, report = rename_net(net, prefix, keep, freeze, bn_stats, counts)
    # The caffemodel's layer records carry their own LayerParameter: rename them the same way,
    # so that the model also reads as a net (parse_model, upgrade tools) with consistent names.
    # Its Split layers (Caffe writes them; no blobs) go: their names would no longer be the ones the net
    # that loads the model gives its own (`<blob>_<layer>_<index>_split` of the renamed names).
    new_model, _ = rename_net(remove_splits(model), prefix, report.kept_blobs, freeze, bn_stats, counts)
    ncio.write_text_proto(out_prototxt, new_net)
    ncio.write_caffemodel(out_model, new_model)
    return report


def _print_rename(report: RenameReport, prefix: str, out_prototxt: str, out_model: str, out=None) -> None:
    out = out or sys.stdout
    w = lambda s: print(s, file=out)  # noqa: E731
    w(f"renamed {len(report.layers)} layers and {len(set(report.blobs))} blobs with the prefix '{prefix}'")
    w("kept blobs (data tops the student shares): " + (", ".join(report.kept_blobs) or "none"))
    if report.data_layers:
        w("data layers written unchanged (when merging into the student's prototxt, leave them out: "
          "the student's data layers feed the teacher): " + ", ".join(report.data_layers))
    if report.loss_layers:
        w("loss/accuracy layers (when merging, delete the losses or give them loss_weight: 0; a "
          "teacher Accuracy in TEST shows the teacher's score): " + ", ".join(report.loss_layers))
    if report.frozen:
        w(f"frozen with param {{ lr_mult: 0 decay_mult: 0 }}: {len(report.frozen)} layers, "
          f"{sum(report.frozen.values())} blobs")
    if report.unfrozen:
        w("WARNING: no blobs stored and no param specs, not frozen: " + ", ".join(report.unfrozen))
    if report.batch_norm:
        w("BatchNorm layers: " + ", ".join(report.batch_norm) + " (use_global_stats unset means batch "
          "statistics and updated running statistics in TRAIN, MicroNet's train-mode teacher; "
          "--bn-stats global freezes them)")
    w(f"wrote {out_prototxt} and {out_model}")


def rename_layers_main(argv: Sequence[str] | None = None) -> int:
    """`rename_layers <in.prototxt> <in.caffemodel> <out.prototxt> <out.caffemodel> [--prefix t_]`"""
    p = argparse.ArgumentParser(
        prog="netcompress rename_layers",
        description="Prefix every layer and blob of a net and its caffemodel (a teacher for in-net "
                    "knowledge distillation). Data-layer tops keep their names (the student shares "
                    "them); data layers are written unchanged.")
    p.add_argument("in_prototxt")
    p.add_argument("in_model", metavar="in_caffemodel")
    p.add_argument("out_prototxt")
    p.add_argument("out_model", metavar="out_caffemodel")
    p.add_argument("--prefix", default="t_", help="prefix of layer, blob and param names (default t_)")
    p.add_argument("--keep", default="", metavar="BLOB[,BLOB]",
                   help="more blob names to leave unprefixed (shared with the student)")
    p.add_argument("--freeze", action="store_true",
                   help="give every blob param { lr_mult: 0 decay_mult: 0 } (a fixed teacher)")
    p.add_argument("--bn-stats", choices=BN_STATS, default="keep",
                   help="BatchNorm use_global_stats: keep (default), global (true: frozen statistics) "
                        "or batch (false: batch statistics in TRAIN, running statistics updated)")

    def run(a: argparse.Namespace) -> int:
        keep = [b for b in a.keep.split(",") if b]
        report = rename_layers(a.in_prototxt, a.in_model, a.out_prototxt, a.out_model, a.prefix, keep,
                               a.freeze, a.bn_stats)
        _print_rename(report, a.prefix, a.out_prototxt, a.out_model)
        return 0
    return run_tool(p, argv, run)


# ----------------------------------------------------------------------------------------------
# dump_logits
# ----------------------------------------------------------------------------------------------

def _data_net(source: str, phase: int, batch: int, scale: float | None, mean_values: Sequence[float],
              device: str):
    """The data layers of `source` (a net prototxt) or a Data layer over `source` (an LMDB or a
    LevelDB)."""
    from ..data.db import LMDB, DataError, kind_name, resolve_backend
    from ..net import Net, filter_net

    if os.path.isdir(source) or source.endswith(".mdb"):
        try:
            kind = resolve_backend(source, None, "dump_logits")
        except DataError as e:
            raise ToolError(f"{e}; nor is it a net prototxt") from None
        param = pb.NetParameter(name="dump_logits_data")
        lp = param.layer.add(name="data", type="Data")
        lp.top.extend(["data", "label"])
        lp.data_param.source = source
        lp.data_param.batch_size = batch
        lp.data_param.backend = pb.DataParameter.LMDB if kind == LMDB else pb.DataParameter.LEVELDB
        if scale is not None:
            lp.transform_param.scale = scale
        lp.transform_param.mean_value.extend(mean_values)
        where = named = f"{kind_name(kind)} {source}"
    else:
        if not os.path.isfile(source):
            raise ToolError(f"{source} does not exist!")
        if scale is not None or mean_values:
            raise ToolError("--scale and --mean-value apply to a database source; a data prototxt has "
                            "its own transform_param")
        full = ncio.read_net(source)
        filtered = filter_net(full, pb.NetState(phase=phase), verbose=False)
        param = pb.NetParameter(name=full.name)
        for lp in filtered.layer:
            if len(lp.bottom) == 0:
                param.layer.add().CopyFrom(lp)
        if not len(param.layer):
            raise ToolError(f"{source}: no data layer (a layer without bottoms) in the "
                            f"{pb.Phase.Name(phase)} phase")
        where, named = f"the {pb.Phase.Name(phase)} data layers of {source}", source
    return Net(param, phase=phase, device=device, verbose=False, source=named), where


def _records(net) -> int | None:
    for _, layer in net.named_layers():
        reader = getattr(layer, "reader", None)
        stream = getattr(reader, "stream", None)
        if stream is not None:
            return int(stream.n)
    return None


def dump_logits(deploy: str, weights: str, source: str, blob: str, out: str, *,
                dataset: str | None = None, rows: int | None = None, batch: int = 100,
                phase: str = "TEST", with_data: bool = True, scale: float | None = None,
                mean_values: Sequence[float] = (), list_file: str | None = None,
                device: str = "cpu", strict: bool = False) -> dict:
    """Run `deploy` (weights from `weights`, a comma list allowed) over `source` and write blob
    `blob` of every row, under the dataset name `dataset` (default: the blob's name), to the
    HDF5 file `out`, with the data tops (unless `with_data` is false) under their own names.

    `source` is a net prototxt whose data layers (layers without bottoms, in `phase`) give the
    inputs, or an LMDB or LevelDB of Datum records read by a Data layer (`batch`, `scale`,
    `mean_values`).
    The net's inputs are fed from the data tops of the same name; a net with one input that no
    data top names takes the first data top. `rows` defaults to the number of records of the
    source (one pass). Also writes `list_file` (default: `out` with `.txt`), the one-line list
    that an HDF5Data layer's `source` names. Returns a summary dict.
    """
    import h5py

    from ..net import Net, check_memory
    from ..weights import copy_weights_list

    ph = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}.get(phase.upper())
    if ph is None:
        raise ToolError(f"phase must be TRAIN or TEST, got '{phase}'")
    require_int_flag(batch, "--batch", 1, "a Caffe blob's size limit", error=ToolError)
    if not os.path.isfile(deploy):
        raise ToolError(f"{deploy} does not exist!")
    if not list_file and os.path.splitext(out)[1] == ".txt":  # (the list file, named after it, replaced the logits)
        raise ToolError(f"--out {out}: the list file's default name (the output's, ending .txt) is the output itself; "
                        "name the HDF5 file .h5, or give --list")
    refuse_overwrites((out, list_file or os.path.splitext(out)[0] + ".txt"), writes=("the logits", "the list file"),
                      deploy_prototxt=deploy, source=source,
                      **{f"weights_{i + 1}": w for i, w in enumerate(weights.split(","))})
    teacher = Net(deploy, phase=pb.TEST, device=device, verbose=False)
    check_memory([teacher])
    copy_weights_list(teacher, weights, verbose=False, strict=strict)
    if blob not in teacher.blob_shapes:
        raise ToolError(f"{deploy}: no blob '{blob}' (blobs: {', '.join(teacher.blob_shapes)})")
    data_net, where = _data_net(source, ph, batch, scale, mean_values, device)
    data_tops = [t for t in data_net.blob_shapes]
    feed: dict[str, str] = {}
    for name in teacher.input_names:
        if name in data_tops:
            feed[name] = name
        elif len(teacher.input_names) == 1:
            feed[name] = data_tops[0]
        else:
            raise ToolError(f"{deploy}: input '{name}' is not a top of {where} (tops: {', '.join(data_tops)})")
    dataset = dataset or blob
    if with_data and dataset in data_tops:
        raise ToolError(f"the logits dataset '{dataset}' has the name of a data top; choose another "
                        "with --dataset")
    n = rows if rows is not None else _records(data_net)
    if n is None:
        raise ToolError(f"{where} does not say how many records it holds: give --rows")
    if n < 1:
        raise ToolError(f"--rows must be at least 1, got {n}")
    widths = {dataset: math.prod(teacher.blob_shapes[blob][1:])}
    widths.update({t: math.prod(data_net.blob_shapes[t][1:]) for t in (data_tops if with_data else [])})
    wide = max(widths, key=widths.get)
    if n * widths[wide] > INT_MAX:  # (else rows gathered until memory ran out, for a file no HDF5Data reads)
        raise ToolError(f"--rows {n} of '{wide}' ({widths[wide]:,} values a row) is more than an HDF5Data "
                        f"layer's blob holds ({INT_MAX:,} values)")
    chunks: dict[str, list[np.ndarray]] = {t: [] for t in ([dataset] + (data_tops if with_data else []))}
    got = 0
    with torch.no_grad():
        while got < n:
            data_net()
            blobs = data_net.blobs
            teacher(**{name: blobs[src] for name, src in feed.items()})
            take = min(n - got, int(teacher.blobs[blob].shape[0]))
            chunks[dataset].append(teacher.blobs[blob][:take].detach().float().cpu().numpy())
            if with_data:
                for t in data_tops:
                    chunks[t].append(blobs[t][:take].detach().float().cpu().numpy())
            got += take
    arrays = {k: np.concatenate(v) for k, v in chunks.items()}
    _write_h5_atomic(out, arrays, h5py)
    list_file = list_file or os.path.splitext(out)[0] + ".txt"
    rel = os.path.relpath(os.path.abspath(out), os.path.dirname(os.path.abspath(list_file)))
    ncio.atomic_write(list_file, rel + "\n")
    return {"out": out, "list": list_file, "rows": n, "source": where,
            "datasets": {k: list(v.shape) for k, v in arrays.items()}}


def _write_h5_atomic(path: str, arrays: dict[str, np.ndarray], h5py) -> None:
    with ncio.atomic_file(path) as f, h5py.File(f, "w") as h:
        for name, a in arrays.items():
            h.create_dataset(name, data=a.astype(np.float32))


def dump_logits_main(argv: Sequence[str] | None = None) -> int:
    """`dump_logits <deploy.prototxt> <weights> <data.prototxt or lmdb> --blob fc --out logits.h5`"""
    p = argparse.ArgumentParser(
        prog="netcompress dump_logits",
        description="Write a net's blob (a teacher's logits) over a data source to an HDF5 file that an "
                    "HDF5Data layer reads back, with the data and labels in the same rows, and the list "
                    "file that hdf5_data_param.source names (transfer-set distillation).")
    p.add_argument("deploy", help="the net (deploy prototxt with Input layers)")
    p.add_argument("weights", help=".caffemodel (a comma list is accepted)")
    p.add_argument("source", help="a net prototxt whose data layers give the inputs, or an LMDB or LevelDB")
    p.add_argument("--blob", required=True, help="the blob to write (e.g. the logits, fc)")
    p.add_argument("--out", required=True, help="the HDF5 file to write (e.g. logits.h5)")
    p.add_argument("--dataset", default=None, help="its dataset name (default: the blob's name)")
    p.add_argument("--list", dest="list_file", default=None,
                   help="the HDF5 list file to write (default: OUT with .txt)")
    p.add_argument("--rows", type=int, default=None, help="rows to write (default: one pass over the source)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST",
                   help="the phase whose data layers a prototxt source uses (default TEST: no random "
                        "augmentation)")
    p.add_argument("--no-data", dest="with_data", action="store_false",
                   help="write only the blob, not the data tops (then the student reads the data from a "
                        "source in the same order, unshuffled)")
    p.add_argument("--batch", type=int, default=100, help="database source: batch size (default 100)")
    p.add_argument("--scale", type=float, default=None, help="database source: transform_param scale")
    p.add_argument("--mean-value", type=float, action="append", default=[],
                   help="database source: transform_param mean_value (repeat per channel)")
    p.add_argument("--gpu", default=None, help="GPU id (default: CPU)")
    p.add_argument("--strict", action="store_true",
                   help="a learnable layer that the weights do not fill is an error (default: a warning)")

    def run(a: argparse.Namespace) -> int:
        from ..device import device_from_gpu_flag

        r = dump_logits(a.deploy, a.weights, a.source, a.blob, a.out, dataset=a.dataset, rows=a.rows,
                        batch=a.batch, phase=a.phase, with_data=a.with_data, scale=a.scale,
                        mean_values=a.mean_value, list_file=a.list_file,
                        device=str(device_from_gpu_flag(a.gpu)), strict=a.strict)
        print(f"wrote {r['rows']} rows from {r['source']} to {r['out']}: "
              + ", ".join(f"{k} {v}" for k, v in r["datasets"].items()))
        print(f"wrote the HDF5 list {r['list']} (hdf5_data_param {{ source: \"{r['list']}\" }}; "
              f"tops: {', '.join(r['datasets'])})")
        return 0
    return run_tool(p, argv, run)
