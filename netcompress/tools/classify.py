"""Classifying image files with a trained deploy net: Caffe's python/classify.py, with the top-k printout of its
examples/cpp_classification.

`netcompress classify INPUT OUTPUT.npy --model_def deploy.prototxt --pretrained_model M.caffemodel` reads INPUT
(an image file, a folder of `*.EXT` images, or an .npy array of H x W x K images), runs pycaffe's
`Classifier` (resize to --images_dim, the ten crops of `caffe.io.oversample` averaged unless --center_only,
then the channel swap, raw scale, mean and input scale of a `caffe.io.Transformer`) and saves the N x C
outputs to OUTPUT.npy (written atomically). With --labels FILE (one class name a line, as Caffe's
synset_words.txt), it also prints each input's top --top_k classes, `0.9731 - "n01440764 tench"`, as
cpp_classification does.

Where Caffe's script was written for its ImageNet model, this one takes the net's own input: --model_def and
--pretrained_model are required; --images_dim defaults to the input's height and width; a net with a
one-channel input reads its images in gray (Caffe's script always read colour, so it could not feed LeNet);
--channel_swap (default 2,1,0: RGB to BGR) applies to three-channel inputs only; --mean_file takes a
.binaryproto (what `compute_image_mean` writes) as well as an .npy, a mean image of another size being
resized to the input's.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import math
import os
import time
from typing import Sequence

import numpy as np

from .. import io as ncio
from ..errors import NetcompressError
from ._common import ToolError, comma_ints, refuse_overwrites, run_tool

__all__ = ["load_inputs", "finite_preprocessing", "read_labels", "read_mean", "set_checked_mean", "add_net_args", "check_net_args",
           "swap_channels", "main"]


def load_inputs(path: str, ext: str, color: bool) -> list[np.ndarray]:
    """The images of an .npy file (N x H x W x K, or one H x W x K), a folder's `*.ext` files, or one file."""
    from ..pycaffe import io as caffe_io

    path = os.path.expanduser(path)
    if path.endswith("npy"):
        print(f"Loading file: {path}")
        arr = _load_npy(path)
        if arr.ndim == 3:
            arr = arr[np.newaxis]
        if arr.ndim != 4:
            raise ToolError(f"{path}: expected N x H x W x K images (4 axes, or 3 for one image), got shape "
                            f"{arr.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(arr).reshape(len(arr), -1).all(axis=1))
        if bad.size:  # (every output of that image would be NaN)
            raise ToolError(f"{path}: image {int(bad[0])} holds values that are not finite as float32 (NaN, "
                            "infinite, or past +-3.4e38)")
        return list(arr)
    if os.path.isdir(path):
        print(f"Loading folder: {path}")
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*." + ext)))
        if not files:
            raise ToolError(f"{path}: no *.{ext} images in the folder (--ext names another extension)")
    elif os.path.isfile(path):
        print(f"Loading file: {path}")
        files = [path]
    else:
        raise ToolError(f"{path}: no such image, folder or .npy file")
    images = []
    for f in files:
        ncio.check_input_file(f, "image")
        try:
            images.append(caffe_io.load_image(f, color=color))
        except Exception as e:  # PIL's errors for a file it cannot read come in several kinds
            raise ToolError(f"{f}: cannot read the image ({e})") from None
    return images


@contextlib.contextmanager
def finite_preprocessing(scales: str):
    """numpy's overflow in the preprocessing (values times the scales past float32) as a ToolError, not a
    RuntimeWarning and NaN outputs."""
    try:
        with np.errstate(over="raise", invalid="raise"):
            yield
    except FloatingPointError as e:
        raise ToolError(f"the preprocessed inputs are not finite ({e}): {scales} take them past float32") from None


def read_labels(path: str, classes: int) -> list[str]:
    """One class name a line; as many lines as the net has outputs."""
    labels = ncio.read_input_text(path, "labels file").splitlines()
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != classes:
        raise ToolError(f"{path}: {len(labels)} labels, but the net has {classes} outputs (one name a line)")
    return labels


def _load_npy(path: str) -> np.ndarray:
    """An .npy file's array (a regular file only; no pickled objects)."""
    data = ncio.read_input_bytes(path, ".npy array")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ToolError(f"{path}: not a readable .npy array ({e})") from None


def read_mean(path: str) -> np.ndarray:
    """A mean (.npy, or a .binaryproto as compute_image_mean writes it, its batch axis dropped)."""
    if path.endswith(".npy"):
        return _load_npy(path)
    arr = ncio.read_binaryproto_array(path)
    return arr[0] if arr.ndim == 4 else arr


def set_checked_mean(net, mean: np.ndarray, path: str) -> None:
    """--mean_file on `net`'s transformer (pycaffe's set_mean, which resizes an image of another size); a mean that
    does not fit the first input (one value a channel, or an image with its channels) names the file."""
    in_ = net.inputs[0]
    k = int(net.blobs[in_].data.shape[1])
    try:
        net.transformer.set_mean(in_, mean)
    except ValueError:  # pycaffe's "Mean channels incompatible with input." / "Mean shape invalid"
        raise ToolError(f"{path}: a mean of shape {list(mean.shape)} does not fit the {k}-channel input '{in_}' "
                        f"(expected one value a channel, or a {k} x H x W image)") from None


def add_net_args(p: argparse.ArgumentParser, mean_help: str) -> None:
    """The options Caffe's classify.py and detect.py share: the net, the mode, the preprocessing."""
    p.add_argument("--model_def", required=True, help="model definition file (a deploy prototxt)")
    p.add_argument("--pretrained_model", required=True, help="trained model weights file")
    p.add_argument("--gpu", action="store_true", help="switch for GPU computation")
    p.add_argument("--mean_file", default="", help=mean_help)
    p.add_argument("--input_scale", type=float, help="multiply input features by this after the mean")
    p.add_argument("--raw_scale", type=float, default=255.0,
                   help="multiply raw input (in [0, 1]) by this before preprocessing (default 255)")
    p.add_argument("--channel_swap", default="2,1,0",
                   help="order to permute three input channels (default RGB -> BGR, as Caffe's OpenCV)")


def check_net_args(a: argparse.Namespace) -> None:
    """The net's files exist; pycaffe's mode set as --gpu says (printed, as Caffe's scripts do)."""
    from .. import pycaffe as caffe

    for value, what in ((a.raw_scale, "--raw_scale"), (a.input_scale, "--input_scale")):
        if value is not None and not math.isfinite(value):  # (every input, and so every output, would be NaN)
            raise ToolError(f"{what} must be a finite number, got {value}")
    if a.raw_scale == 0:  # (every input would be the negated mean; detect divides its context mean by it)
        raise ToolError("--raw_scale must not be 0")
    for path, what in ((a.model_def, "--model_def"), (a.pretrained_model, "--pretrained_model")):
        try:
            ncio.check_input_file(path, f"{what} file")
        except NetcompressError as e:
            raise ToolError(f"{what} {e}") from None
    if a.gpu:
        caffe.set_mode_gpu()
        print("GPU mode")
    else:
        caffe.set_mode_cpu()
        print("CPU mode")


def swap_channels(net, channel_swap: str) -> None:
    """--channel_swap on `net`'s transformer, for a three-channel input (others keep their channels)."""
    in_ = net.inputs[0]
    if channel_swap and net.blobs[in_].data.shape[1] == 3:
        net.transformer.set_channel_swap(in_, comma_ints(channel_swap, "--channel_swap"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netcompress classify", description=(
        "Classify images with a trained deploy net and save the outputs as .npy (Caffe's python/classify.py); "
        "with --labels, print each image's top classes (Caffe's cpp_classification)."))
    p.add_argument("input_file", help="input image, directory, or npy")
    p.add_argument("output_file", help="output npy filename")
    add_net_args(p, "data set mean (K x H x W .npy, or a .binaryproto); '' for no mean subtraction")
    p.add_argument("--center_only", action="store_true",
                   help="predict from the center crop alone instead of averaging the ten crops (default)")
    p.add_argument("--images_dim", default=None,
                   help="canonical 'height,width' the images are resized to (default: the net input's)")
    p.add_argument("--ext", default="jpg", help="image file extension when input_file is a directory")
    p.add_argument("--labels", default=None, help="class names, one a line: print each input's top classes")
    p.add_argument("--top_k", type=int, default=5, help="how many classes --labels prints (default 5)")

    def body(a: argparse.Namespace) -> int:
        from .. import pycaffe as caffe

        if a.top_k < 1:
            raise ToolError(f"--top_k must be at least 1, got {a.top_k}")
        output = a.output_file if a.output_file.endswith(".npy") else a.output_file + ".npy"
        # (`classify images.npy images.npy` replaced the images by their predictions)
        refuse_overwrites([output], writes=["the predictions"], input_file=a.input_file, model_def=a.model_def,
                          pretrained_model=a.pretrained_model, mean_file=a.mean_file, labels=a.labels)
        check_net_args(a)
        mean = read_mean(a.mean_file) if a.mean_file else None
        image_dims = comma_ints(a.images_dim, "--images_dim") if a.images_dim else None
        if image_dims is not None and (len(image_dims) != 2 or min(image_dims) < 1):
            raise ToolError(f"--images_dim takes 'height,width', got '{a.images_dim}'")
        classifier = caffe.Classifier(a.model_def, a.pretrained_model,  # (image_dims once checked, below)
                                      input_scale=a.input_scale, raw_scale=a.raw_scale)
        in_ = classifier.inputs[0]
        shape = classifier.blobs[in_].data.shape
        if len(shape) != 4:
            raise ToolError(f"{a.model_def}: input '{in_}' is {shape}; classify feeds N x K x H x W images")
        if image_dims is not None and (image_dims[0] < shape[2] or image_dims[1] < shape[3]):
            raise ToolError(f"--images_dim {image_dims[0]},{image_dims[1]} is smaller than the net's {shape[2]}x"
                            f"{shape[3]} input: the crops the net sees are cut from images of that size")
        if image_dims is not None:
            classifier.image_dims = np.array(image_dims)
        if mean is not None:
            set_checked_mean(classifier, mean, a.mean_file)
        channels = shape[1]
        swap_channels(classifier, a.channel_swap)
        inputs = load_inputs(a.input_file, a.ext, color=channels != 1)
        for i, im in enumerate(inputs):
            if im.ndim != 3 or im.shape[2] != channels:
                raise ToolError(f"input {i} is {im.shape}; the net takes {channels}-channel images")
        print(f"Classifying {len(inputs)} inputs.")
        start = time.time()
        with finite_preprocessing(f"--raw_scale {a.raw_scale} and --input_scale {a.input_scale}"):
            predictions = classifier.predict(inputs, not a.center_only)
        print(f"Done in {time.time() - start:.2f} s.")
        if a.labels:
            flat = predictions.reshape(len(predictions), -1)
            labels = read_labels(a.labels, flat.shape[1])
            for i, row in enumerate(flat):
                print(f"---------- Prediction for input {i} ----------")
                for k in np.argsort(-row, kind="stable")[:a.top_k]:
                    print(f'{row[k]:.4f} - "{labels[k]}"')
        print(f"Saving results into {a.output_file}")
        buf = io.BytesIO()
        np.save(buf, predictions)
        ncio.atomic_write(output, buf.getvalue())
        return 0

    return run_tool(p, None if argv is None else list(argv), body)
