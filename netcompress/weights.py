"""Caffe's `--weights a.caffemodel,b.caffemodel` list: several files copied into one net.

Used to load a student and its teacher into one distillation net (`--weights
student.caffemodel,teacher.caffemodel`, recipes-spec 5.2). Every file is checked before any is
read, so a typo stops the run before training starts. The files are copied in order, each layer
by name as `Net.copy_from` does; a later file fills only the layers that no earlier file filled.
(Caffe's `CopyLayers` lets a later file overwrite; here the first file that holds a layer wins,
and the log says which file filled which layers and which layers a later file also held.)
Learnable layers that no file filled are named in one WARNING (an error with `strict`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Sequence

from . import io as ncio
from .errors import WeightLoadError, describe_os_error
from .log import get_logger
from .proto import caffe_pb2 as pb

if TYPE_CHECKING:
    from .net import Net

log = get_logger("net")

__all__ = ["split_weights", "check_weight_files", "copy_weights_list", "require_some_layer_filled",
           "warn_non_finite"]

_ANON = "<NetParameter>"  # how Net.copy_from names a source that is not a file


def split_weights(weights: str | Sequence[str] | None) -> list[str]:
    """The files of a weights list, in order: a comma-separated string, or a sequence of them."""
    if not weights:
        return []
    items = [weights] if isinstance(weights, str) else list(weights)
    return [p.strip() for w in items for p in w.split(",")]


def check_weight_files(paths: Sequence[str]) -> None:
    """Raise `WeightLoadError` naming the first entry that is empty, missing or a folder, and its
    position in the list."""
    n = len(paths)
    listed = ",".join(paths)
    for k, p in enumerate(paths, 1):
        where = f"--weights {listed}: file {k} of {n}"
        if not p:
            raise WeightLoadError(f"{where} is empty (two commas, or a comma at an end)")
        if "\0" in p:
            raise WeightLoadError(f"{where}, {p!r}: a file name cannot contain a NUL byte")
        try:
            os.stat(p)
        except FileNotFoundError:
            raise WeightLoadError(f"{where}, '{p}', does not exist") from None
        except OSError as e:  # a symlink loop, a name too long, a '/' after a file name
            raise WeightLoadError(f"{where}, '{p}': {describe_os_error(e, 'read')}") from None
        if os.path.isdir(p):
            raise WeightLoadError(f"{where}, '{p}', is a folder, expected a .caffemodel")


def require_some_layer_filled(path: str, source: pb.NetParameter, net: "Net") -> None:
    """Raise `WeightLoadError` when the model `path` can fill no layer of `net`: it holds no layers
    (a 0-byte file, /dev/null, a truncated download), or none of its layers with blobs has the name
    of a net layer with blobs. The net would run on its random initial weights, which is never what
    a user meant. (A net without any blobs has nothing to fill; it is not an error.)"""
    wanted = [n for n, layer in net.named_layers() if layer.blob_names]
    if not wanted:
        return
    if not len(source.layer):
        raise WeightLoadError(f"{path}: the model holds no layers (an empty or truncated file?); the net "
                              f"{net.source} has {len(wanted)} layer(s) with weights to fill")
    with_blobs = [sl.name for sl in source.layer if len(sl.blobs)]
    if not with_blobs:
        raise WeightLoadError(f"{path}: none of the model's {len(source.layer)} layer(s) holds weights (is it a "
                              f"net definition rather than a trained model?)")
    names = set(wanted)
    if not any(n in names for n in with_blobs):
        def some(xs: list[str]) -> str:
            return ", ".join(f"'{x}'" for x in xs[:6]) + (f", ... ({len(xs)} in all)" if len(xs) > 6 else "")

        raise WeightLoadError(f"{path}: no layer of the model matches a layer of the net {net.source} by name "
                              f"(the model has {some(with_blobs)}; the net has {some(wanted)}), so no weight "
                              "would be loaded; are the model and the net from the same training?")


def warn_non_finite(path: str, layer: str, index: int, blob_name: str, tensor) -> None:
    """Log a WARNING when a loaded blob holds NaN or infinite values (a diverged training's
    snapshot): outputs computed from it are NaN, and training stops at the first non-finite loss."""
    import torch

    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        log.warning("%s: layer '%s' blob %d (%s) holds %d NaN or infinite value(s) of %d: the net's outputs "
                    "will not be finite (a diverged training's snapshot?)", path, layer, index, blob_name,
                    bad, tensor.numel())


def copy_weights_list(net: "Net", weights: str | Sequence[str] | None, verbose: bool = True,
                      strict: bool = False, report: bool = True) -> "OrderedDict[str, str]":
    """Copy every file of `weights` into `net` (see the module docstring).

    Returns layer name -> the file that filled it. Errors (blob count, shape) name the file; with
    `report`, a learnable layer that no file filled is named in a WARNING (an error with `strict`).
    """
    paths = split_weights(weights)
    check_weight_files(paths)
    filled: "OrderedDict[str, str]" = OrderedDict()
    for k, path in enumerate(paths, 1):
        source = ncio.read_caffemodel(path)
        require_some_layer_filled(path, source, net)
        take = pb.NetParameter()
        copied, kept, absent = [], [], []
        for sl in source.layer:
            if not net.has_layer(sl.name):
                if sl.name not in net.split_names:  # (a Split layer Caffe inserts in this net too: no blobs)
                    absent.append(sl.name)
            elif not len(sl.blobs) and not net.layer(sl.name).blob_names:
                continue  # nothing to copy (ReLU, Pooling, ...)
            elif sl.name in filled and filled[sl.name] != path:
                kept.append(sl.name)
            else:
                take.layer.add().CopyFrom(sl)
                if sl.name not in copied:
                    copied.append(sl.name)
        if verbose:
            log.info("Finetuning from %s (file %d of %d)", path, k, len(paths))
        try:
            net.copy_from(take, report=False, source_name=path)
        except WeightLoadError as e:
            msg = str(e)
            if msg.startswith(path):
                raise
            raise WeightLoadError(path + msg[len(_ANON):] if msg.startswith(_ANON) else f"{path}: {msg}") from None
        for name in copied:
            filled[name] = path
        if verbose:
            log.info("%s filled %d layer(s): %s", path, len(copied), ", ".join(copied) or "none")
            if kept:
                log.info("%s: kept %d layer(s) an earlier file filled: %s", path, len(kept), ", ".join(kept))
            if absent:
                log.info("%s: ignored %d layer(s) the net does not have: %s", path, len(absent),
                         ", ".join(absent))
    if paths and report:
        net.report_unfilled(filled, "--weights " + ",".join(paths), strict=strict)
    return filled
