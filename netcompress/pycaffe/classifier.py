"""`caffe.Classifier`: a TEST net that classifies H x W x K images (scaled, center-cropped or oversampled)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from . import io as caffe_io
from ._base import TEST, two_dims
from .net import Net

__all__ = ["Classifier"]


def input_transformer(net: Net, mean: np.ndarray | None, input_scale: float | None, raw_scale: float | None,
                      channel_swap: Sequence[int] | None) -> caffe_io.Transformer:
    """The Transformer of `net`'s first input that Classifier and Detector set up: H x W x K images transposed,
    then the channel swap, raw scale, mean and input scale that are given."""
    if not net.inputs:  # (pycaffe: an IndexError)
        raise ValueError(f"{type(net).__name__}: the net has no input blob to feed the images to (a deploy net "
                         "declares one: an Input layer, or input: and input_shape)")
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """pycaffe's Classifier: `Classifier(model_file, pretrained_file, image_dims=None, mean=None,
    input_scale=None, raw_scale=None, channel_swap=None)`. Images are resized to `image_dims` (default: the
    input's size), cropped to the input's size, and preprocessed by a `caffe.io.Transformer` (transpose to
    K x H x W, then the given channel swap, raw scale, mean and input scale)."""

    def __init__(self, model_file, pretrained_file, image_dims: Sequence[int] | None = None,
                 mean: np.ndarray | None = None, input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or (isinstance(image_dims, (tuple, list)) and not image_dims):
            self.image_dims = self.crop_dims
        else:
            self.image_dims = np.array(two_dims("Classifier", "image_dims", image_dims))
            if np.any(self.image_dims < self.crop_dims):
                raise ValueError(f"Classifier: image_dims {self.image_dims.tolist()} are smaller than the net's input "
                                 f"{self.crop_dims.tolist()} (the crops are taken from images of image_dims)")

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class probabilities (N x C) of N images (each H x W x K): with `oversample`, the mean over the ten
        crops of `caffe.io.oversample`; otherwise of the center crop."""
        h, w = (int(d) for d in self.image_dims)
        inputs = [np.asarray(im) for im in inputs]
        if not inputs:
            raise ValueError("Classifier.predict needs at least one image")
        for i, im in enumerate(inputs):
            if im.ndim != 3 or im.shape[2] != inputs[0].shape[2]:
                raise ValueError(f"Classifier.predict takes H x W x K images of one K: image {i} has shape "
                                 f"{list(im.shape)}")
        scaled = np.zeros((len(inputs), h, w, inputs[0].shape[2]), dtype=np.float32)
        for i, im in enumerate(inputs):
            scaled[i] = caffe_io.resize_image(im, (h, w))
        if oversample:
            crops = caffe_io.oversample(scaled, self.crop_dims)
        else:
            center = np.array([h, w]) / 2.0
            lo = (center - self.crop_dims / 2.0).astype(int)
            hi = (center + self.crop_dims / 2.0).astype(int)
            crops = scaled[:, lo[0]:hi[0], lo[1]:hi[1], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops.shape[3], crops.shape[1], crops.shape[2]), dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
