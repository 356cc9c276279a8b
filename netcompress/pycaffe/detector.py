"""`caffe.Detector`: R-CNN's windowed detection, each window cropped (with context padding) and warped to the
net's input, as pycaffe's detector.py does.

`Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None, channel_swap=None,
context_pad=None)`; `detect_windows([(image file, [(ymin, xmin, ymax, xmax), ...]), ...])` gives one
`{"window", "prediction", "filename"}` dict a window, in order; `crop(image, window)` and
`configure_crop(context_pad)` are pycaffe's. `detect_selective_search(files)` needs the external
`selective_search_ijcv_with_python` module (and MATLAB), as in Caffe.

Caffe's arithmetic is kept, quirks included: a window crops `im[ymin:ymax, xmin:xmax]` (its end row and column
left out), while the context box treats it as inclusive (`+ 1`); the box is rounded half to even (numpy) and the
padding and crop sizes half away from zero (Python 2's `round`, which the script was written for); the context
crop is `im[box]` with the box's end left out again. Where pycaffe's code relied on Python 2 and old numpy
(float indices, a `round` that returned floats), the same numbers are computed with integers.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

import numpy as np

from . import io as caffe_io
from ._base import TEST
from .classifier import input_transformer
from .net import Net

__all__ = ["Detector"]


def _round_half_away(x: float) -> int:
    """Python 2's round() of a float, as an int."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


class Detector(Net):
    """pycaffe's Detector: a TEST net that classifies windows of images (see the module docstring)."""

    def __init__(self, model_file, pretrained_file, mean: np.ndarray | None = None, input_scale: float | None = None,
                 raw_scale: float | None = None, channel_swap: Sequence[int] | None = None,
                 context_pad: int | None = None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Iterable[tuple[str, Sequence[Sequence[int]]]]) -> list[dict]:
        """Crop every window of every image, warp each to the net's input, and classify them in batches:
        `[{"window": window, "prediction": output vector, "filename": image file}, ...]` in input order."""
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]
        color = self.blobs[self.inputs[0]].data.shape[1] != 1
        window_inputs = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname, color=color).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        if not window_inputs:
            return []
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                            dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, ix = [], 0
        for fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """`detect_windows` over Selective Search's proposals (the external selective_search_ijcv_with_python
        module, which runs MATLAB)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError as e:
            raise ImportError("detect_selective_search needs the selective_search_ijcv_with_python module (and "
                              "MATLAB), as Caffe's Detector does; detect_windows takes windows from any other "
                              "proposal method") from e
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im: np.ndarray, window: Sequence[int]) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of the H x W x K image `im`; with `context_pad`, a box grown so
        that `context_pad` pixels of the net's input are context, out-of-image parts filled with the mean."""
        w = [int(v) for v in window]
        crop = im[w[0]:w[2], w[1]:w[3]]
        if not self.context_pad and not crop.size:
            raise ValueError(f"window {tuple(w)} crops nothing of the {im.shape[0]}x{im.shape[1]} image")
        if self.context_pad:
            crop_size = self.blobs[self.inputs[0]].width  # pycaffe assumes a square input
            scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
            half_h = (w[2] - w[0] + 1) / 2.0
            half_w = (w[3] - w[1] + 1) / 2.0
            center = (w[0] + half_h, w[1] + half_w)
            scaled = scale * np.array((-half_h, -half_w, half_h, half_w))
            box = np.round(np.tile(center, 2) + scaled)
            full_h = box[2] - box[0] + 1
            full_w = box[3] - box[1] + 1
            scale_h = crop_size / full_h
            scale_w = crop_size / full_w
            pad_y = _round_half_away(max(0.0, -box[0]) * scale_h)  # the part out of the image
            pad_x = _round_half_away(max(0.0, -box[1]) * scale_w)
            im_h, im_w = im.shape[:2]
            box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
            clip_h = box[2] - box[0] + 1
            clip_w = box[3] - box[1] + 1
            if not (clip_h > 0 and clip_w > 0):
                raise ValueError(f"window {tuple(w)} lies outside the {im_h}x{im_w} image")
            crop_h = _round_half_away(clip_h * scale_h)
            crop_w = _round_half_away(clip_w * scale_w)
            crop_h = min(crop_h, crop_size - pad_y)
            crop_w = min(crop_w, crop_size - pad_x)
            b = [int(v) for v in box]
            context_crop = caffe_io.resize_image(im[b[0]:b[2], b[1]:b[3]], (crop_h, crop_w))
            crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
            crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad: int | None) -> None:
        """The crop's dimensions (H x W x K) and context padding; with padding, the mean in the raw image's
        space (channel order and scale undone) that fills the out-of-image part of a context crop."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            width = self.blobs[in_].width
            if 2 * self.context_pad >= width:
                raise ValueError(f"context_pad {self.context_pad} leaves no window in the net's {width}-pixel input "
                                 "(2 x context_pad must be less than the input's width)")
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                crop_mean = np.array(mean, dtype=np.float32).transpose(inv_tpose)
                if channel_order is not None:
                    order = list(channel_order)
                    crop_mean = crop_mean[:, :, [order.index(i) for i in range(crop_mean.shape[2])]]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
