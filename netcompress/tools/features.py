"""Caffe's extract_features tool: a trained net's blobs over its own data, written as Datum records.

`extract_features WEIGHTS NET.prototxt BLOB1[,BLOB2...] DB1[,DB2...] NUM_MINI_BATCHES lmdb|leveldb
[CPU|GPU] [DEVICE_ID]`, Caffe's positional arguments: the net is built in the TEST phase with its data
layers, runs NUM_MINI_BATCHES forwards, and each blob's rows go to its own new database, one Datum a row
(`float_data`; channels, height and width from the blob's legacy 4-D shape), keys the row's index as ten
digits. Unlike Caffe, the databases are written atomically: an error or Ctrl-C leaves none behind.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Sequence

import torch

from ..cliargs import require_int_flag
from ..log import get_logger
from ..proto import caffe_pb2 as pb
from ._common import ToolError, run_tool

log = get_logger("tools")

__all__ = ["extract_features", "extract_features_main", "legacy_shape"]


def legacy_shape(shape: Sequence[int], who: str) -> tuple[int, int, int, int]:
    """Caffe's num, channels, height, width of a blob of at most 4 axes (1 where an axis is absent)."""
    if len(shape) > 4:
        raise ToolError(f"{who} has shape {list(shape)}: Caffe's legacy num/channels/height/width accessors "
                        "take blobs of at most 4 axes")
    dims = [int(d) for d in shape] + [1] * (4 - len(shape))
    return dims[0], dims[1], dims[2], dims[3]


def extract_features(weights: str, proto: str, blob_names: Sequence[str], dataset_names: Sequence[str],
                     num_mini_batches: int, db_type: str, device: str | torch.device = "cpu") -> dict[str, int]:
    """Run `proto` (TEST phase, weights from `weights`, a comma list allowed) for `num_mini_batches`
    forwards and write each of `blob_names` to the new database of the same position in `dataset_names`
    (`db_type` "lmdb" or "leveldb"). Returns blob name -> records written."""
    from ..data.db import DataError, backend_name, open_writer
    from ..net import Net, check_memory
    from ..weights import copy_weights_list

    blob_names, dataset_names = list(blob_names), list(dataset_names)
    if len(blob_names) != len(dataset_names):
        raise ToolError(f"{len(blob_names)} blob names ({','.join(blob_names)}) and {len(dataset_names)} dataset "
                        f"names ({','.join(dataset_names)}): the number of blob names and dataset names must "
                        "be equal")
    if len(set(dataset_names)) != len(dataset_names):
        raise ToolError(f"a dataset is named twice in {','.join(dataset_names)}")
    if "" in dataset_names or "" in blob_names:
        raise ToolError(f"an empty name in the blob names '{','.join(blob_names)}' or the dataset names "
                        f"'{','.join(dataset_names)}'")
    # (past INT_MAX: Caffe's int; it ran for ever)
    require_int_flag(num_mini_batches, "num_mini_batches", 0, error=ToolError)
    try:
        backend = backend_name(db_type)
    except DataError as e:
        raise ToolError(str(e)) from None
    net = Net(proto, phase=pb.TEST, device=device)
    check_memory([net])
    copy_weights_list(net, weights)
    for name in blob_names:
        if name not in net.blob_shapes:
            raise ToolError(f"Unknown feature blob name {name} in the network {proto} (blobs: "
                            f"{', '.join(net.blob_shapes)})")
        legacy_shape(net.blob_shapes[name], f"blob '{name}'")  # refused before any database is created
    counts = dict.fromkeys(blob_names, 0)
    with contextlib.ExitStack() as stack:
        dbs = []
        for name in dataset_names:
            log.info("Opening dataset %s", name)
            dbs.append(stack.enter_context(open_writer(name, backend)))
        log.info("Extracting Features")
        datum = pb.Datum()
        for _ in range(num_mini_batches):
            with torch.no_grad():
                net()
            for name, db in zip(blob_names, dbs):
                blob = net.blobs[name]
                num, channels, height, width = legacy_shape(blob.shape, f"blob '{name}'")
                rows = blob.detach().to("cpu", torch.float32).reshape(num, -1).numpy()
                datum.channels, datum.height, datum.width = channels, height, width
                for row in rows:
                    del datum.float_data[:]
                    datum.float_data.extend(row.tolist())
                    db.put(b"%010d" % counts[name], datum.SerializeToString())
                    counts[name] += 1
                    if counts[name] % 1000 == 0:
                        log.info("Extracted features of %d query images for feature blob %s", counts[name], name)
        for name in blob_names:
            log.info("Extracted features of %d query images for feature blob %s", counts[name], name)
    log.info("Successfully extracted the features!")
    return counts


def extract_features_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="netcompress extract_features",
        description="Caffe's extract_features: run a trained net (TEST phase, its own data layers) for "
                    "NUM_MINI_BATCHES forwards and write each named blob's rows to a new LMDB or LevelDB, "
                    "one Datum (float_data) a row, keys the row index as ten digits. Several blobs and "
                    "datasets are given as comma lists of equal length.")
    p.add_argument("pretrained_net_param", help=".caffemodel (a comma list is accepted)")
    p.add_argument("feature_extraction_proto_file", help="the net prototxt, with its data layers")
    p.add_argument("blob_names", help="extract_feature_blob_name1[,name2,...]")
    p.add_argument("dataset_names", help="save_feature_dataset_name1[,name2,...] (new database folders)")
    p.add_argument("num_mini_batches", type=int, help="forwards to run (each writes a batch of rows)")
    p.add_argument("db_type", help="lmdb or leveldb")
    p.add_argument("mode", nargs="?", default="CPU", choices=["CPU", "GPU"], help="CPU (default) or GPU")
    p.add_argument("device_id", nargs="?", type=int, default=0, help="the GPU's id (default 0)")

    def body(a: argparse.Namespace) -> int:
        from ..device import device_from_gpu_flag

        if a.device_id < 0:
            raise ToolError(f"DEVICE_ID must be at least 0, got {a.device_id}")
        if a.mode == "GPU" and not torch.cuda.is_available():
            raise ToolError("GPU mode, but no CUDA device is available here; give CPU (or leave the mode out)")
        device = device_from_gpu_flag(str(a.device_id) if a.mode == "GPU" else None)
        extract_features(a.pretrained_net_param, a.feature_extraction_proto_file, a.blob_names.split(","),
                         a.dataset_names.split(","), a.num_mini_batches, a.db_type, device)
        return 0

    return run_tool(p, None if argv is None else list(argv), body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(extract_features_main())
