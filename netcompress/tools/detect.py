"""Windowed detection from the command line: Caffe's python/detect.py over `caffe.Detector`.

`netcompress detect WINDOWS.csv OUT.csv|OUT.h5 --model_def deploy.prototxt --pretrained_model M.caffemodel` reads
a CSV with a header naming `filename`, `ymin`, `xmin`, `ymax` and `xmax` (in any order; other columns are
ignored), crops every window with --context_pad pixels of context (default 16, R-CNN's), warps it to the net's
input and writes one row a window: the file name, the window and the net's output. A .txt input lists image
files, one a line, for --crop_mode selective_search (the external module Caffe used; the default for .txt).

The output, written atomically: a .csv has the columns filename, ymin, xmin, ymax, xmax, class0 ... (what Caffe's
script meant to write; its CSV branch referred to names it never defined), any other name an HDF5 file of three
datasets, `filename` (strings), `window` (N x 4) and `prediction` (N x C), readable with h5py alone (Caffe's was
a pandas DataFrame, which needs PyTables). As in Caffe's script, a --mean_file image (.npy, or a .binaryproto)
is reduced to its per-channel mean; the channel swap applies to three-channel inputs only.
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from typing import Sequence

import numpy as np

from .. import io as ncio
from ..errors import NetcompressError
from ._common import ToolError, refuse_overwrites, run_tool
from .classify import (add_net_args, check_net_args, finite_preprocessing, read_mean, set_checked_mean,
                       swap_channels)

__all__ = ["read_windows", "write_detections", "main"]

COORD_COLS = ["ymin", "xmin", "ymax", "xmax"]


def read_windows(path: str) -> list[tuple[str, list[list[int]]]]:
    """(image file, windows) in the order the files first appear; each window ymin, xmin, ymax, xmax."""
    with io.StringIO(ncio.read_input_text(path, "windows file"), newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = fields
        missing = [c for c in ["filename"] + COORD_COLS if c not in fields]
        if missing:
            raise ToolError(f"{path}:1: the header must name filename, ymin, xmin, ymax and xmax; "
                            f"missing {', '.join(missing)} (header: {', '.join(fields) or 'none'})")
        grouped: dict[str, list[list[int]]] = {}
        try:
            for row in reader:
                line = reader.line_num
                window = []
                for c in COORD_COLS:
                    text = (row.get(c) or "").strip()
                    try:
                        v = float(text)
                    except ValueError:
                        v = float("nan")
                    if not v.is_integer():
                        raise ToolError(f"{path}:{line}: {c} must be a whole pixel index, got '{text}'")
                    window.append(int(v))
                if window[2] <= window[0] or window[3] <= window[1]:
                    raise ToolError(f"{path}:{line}: the window {tuple(window)} is empty (ymax must exceed ymin "
                                    "and xmax xmin)")
                grouped.setdefault(row["filename"].strip(), []).append(window)
        except csv.Error as e:
            raise ToolError(f"{path}:{reader.line_num}: {e}") from None
    if not grouped:
        raise ToolError(f"{path}: no windows after the header")
    return list(grouped.items())


def _read_image_list(path: str) -> list[str]:
    return [line.strip() for line in ncio.read_input_text(path, "image list").splitlines() if line.strip()]


def write_detections(path: str, detections: Sequence[dict]) -> None:
    """One row a window: CSV for a .csv name, else HDF5 (datasets filename, window, prediction)."""
    predictions = np.stack([np.asarray(d["prediction"], dtype=np.float32).ravel() for d in detections])
    windows = np.array([[int(v) for v in d["window"]] for d in detections], dtype=np.int64).reshape(-1, 4)
    names = [str(d["filename"]) for d in detections]
    if path.lower().endswith("csv"):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["filename"] + COORD_COLS + [f"class{k}" for k in range(predictions.shape[1])])
        for name, window, pred in zip(names, windows, predictions):
            w.writerow([name] + window.tolist() + [repr(float(v)) for v in pred])
        ncio.atomic_write(path, buf.getvalue())
        return
    import h5py

    with ncio.atomic_file(path) as f:
        with h5py.File(f, "w") as h5:
            h5.create_dataset("filename", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            h5.create_dataset("window", data=windows)
            h5.create_dataset("prediction", data=predictions)


def _channel_mean(path: str) -> np.ndarray:
    """--mean_file reduced to one value a channel, as Caffe's detect.py does."""
    mean = read_mean(path)
    if mean.ndim == 3 and mean.shape[1:] != (1, 1):
        mean = mean.mean(1).mean(1)
    return mean.reshape(-1) if mean.ndim == 3 else mean


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress detect", description=(
        "Classify windows of images with a deploy net, R-CNN style (Caffe's python/detect.py): a .csv of "
        "filename, ymin, xmin, ymax, xmax windows, or a .txt image list for selective search."))
    p.add_argument("input_file", help=".csv of windows (header: filename, ymin, xmin, ymax, xmax) or .txt of images")
    p.add_argument("output_file", help="output .csv, or HDF5 (any other name)")
    p.add_argument("--crop_mode", choices=["list", "selective_search"], default=None,
                   help="how windows are chosen (default: list for a .csv, selective_search for a .txt)")
    add_net_args(p, "data set mean (.npy or .binaryproto), reduced to one value a channel; '' for none")
    p.add_argument("--context_pad", type=int, default=16, help="amount of surrounding context to collect")

    def body(a: argparse.Namespace) -> int:
        from .. import pycaffe as caffe

        ncio.check_input_file(a.input_file, "windows .csv or image list .txt")
        refuse_overwrites([a.output_file], writes=["the detections"], input_file=a.input_file,
                          model_def=a.model_def, pretrained_model=a.pretrained_model, mean_file=a.mean_file)
        ext = a.input_file.lower().rsplit(".", 1)[-1]
        if ext not in ("txt", "csv"):
            raise ToolError(f"{a.input_file}: unknown input file type (a .csv of windows or a .txt of images)")
        mode = a.crop_mode or ("list" if ext == "csv" else "selective_search")
        if mode == "list" and ext != "csv":
            raise ToolError(f"--crop_mode list takes a .csv of windows, got {a.input_file}")
        if a.context_pad < 0:
            raise ToolError(f"--context_pad must be >= 0, got {a.context_pad}")
        mean = _channel_mean(a.mean_file) if a.mean_file else None
        start = time.time()
        print("Loading input...")
        if mode == "list":
            images_windows = read_windows(a.input_file)
            for fname, _ in images_windows:
                try:
                    ncio.check_input_file(fname, "image")
                except NetcompressError as e:
                    raise ToolError(f"{a.input_file}: image {e}") from None
        else:
            images = _read_image_list(a.input_file)
        check_net_args(a)
        try:
            detector = caffe.Detector(a.model_def, a.pretrained_model, input_scale=a.input_scale,
                                      raw_scale=a.raw_scale, context_pad=a.context_pad)
        except ValueError as e:
            raise ToolError(f"--context_pad: {e}") from None
        in_ = detector.inputs[0]
        shape = detector.blobs[in_].data.shape
        if len(shape) != 4 or (a.context_pad and shape[2] != shape[3]):
            raise ToolError(f"{a.model_def}: input '{in_}' is {shape}; detect feeds square N x K x S x S windows")
        if mean is not None:
            set_checked_mean(detector, mean, a.mean_file)
        swap_channels(detector, a.channel_swap)
        detector.configure_crop(a.context_pad)  # the context mean in the images' channel order
        with finite_preprocessing(f"--raw_scale {a.raw_scale} and --input_scale {a.input_scale}"):
            if mode == "list":
                try:
                    detections = detector.detect_windows(images_windows)
                except ValueError as e:
                    raise ToolError(f"{a.input_file}: {e}") from None
            else:
                try:
                    detections = detector.detect_selective_search(images)
                except ImportError as e:
                    raise ToolError(f"{e} (or give a .csv of windows with --crop_mode list)") from None
        print(f"Processed {len(detections)} windows in {time.time() - start:.3f} s.")
        start = time.time()
        write_detections(a.output_file, detections)
        print(f"Saved to {a.output_file} in {time.time() - start:.3f} s.")
        return 0

    return run_tool(p, None if argv is None else list(argv), body)
