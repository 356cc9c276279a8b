"""`caffe.io`: images in and out of a net's input layout, and BlobProto / Datum conversions, as pycaffe's io.

Images are read with Pillow instead of scikit-image, to the same result: float32 in [0, 1], H x W x 3 (RGB) or
H x W x 1, grayscale through scikit-image's weights (0.2125, 0.7154, 0.0721). `resize_image` interpolates as
scikit-image's `resize(..., order, mode='constant')` did in Caffe's time (before scikit-image 0.15: no Gaussian
smoothing before a downsampling; pixels outside the image count as 0), orders 0 and 1 here; images of other
than 1 or 3 channels go through scipy's `ndimage.zoom`, as in pycaffe (scipy is then needed: it is no
dependency of netcompress, and without it such a call says so).

Differences from pycaffe's io: `Transformer.preprocess` never writes into the caller's array (pycaffe's scales a
float32 image in place when it needs no resize and no channel swap), and `load_image` reads the first frame of
an animated or multi-page file.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from ..data.transformer import array_to_datum as _array_to_datum, datum_to_array as _datum_to_array
from ..proto import caffe_pb2
from ._base import real_array, two_dims

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "Transformer", "load_image",
           "resize_image", "oversample"]


# ----------------------------------------------------------------------------------------------------------------
# proto <-> ndarray
# ----------------------------------------------------------------------------------------------------------------

def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The blob's data (or diff) as a float64 array of its shape: the legacy num/channels/height/width where any
    of them is set, else `shape.dim` (a blob with no shape and more than one value is a ValueError)."""
    data = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(blob.shape.dim)
    if data.size != int(np.prod(shape, dtype=object)):
        what = "diff" if return_diff else "data"
        raise ValueError(f"blobproto_to_array: the BlobProto's {what} holds {data.size} values, its shape "
                         f"{list(shape)} needs {int(np.prod(shape, dtype=object))}")
    return data.reshape(shape)


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with `arr`'s shape and values (and `diff`'s values, which must have the same shape)."""
    arr = real_array(arr, "array_to_blobproto")
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        diff = real_array(diff, "array_to_blobproto")
        if diff.shape != arr.shape:
            raise ValueError(f"array_to_blobproto: the diff's shape {list(diff.shape)} is not the array's "
                             f"{list(arr.shape)}")
        blob.diff.extend(diff.astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: Iterable[np.ndarray]) -> bytes:
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(a) for a in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(s: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(s)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A Datum of a C x H x W array: uint8 values as the `data` bytes, other types as `float_data`
    (netcompress.data.transformer's, as Caffe's tools write it); the label left unset without one, as pycaffe."""
    arr = real_array(arr, "array_to_datum")
    if arr.ndim != 3:
        raise ValueError(f"Incorrect array shape: a Datum holds a 3-D (channels, height, width) array, got shape "
                         f"{list(arr.shape)}")
    datum = _array_to_datum(arr, 0 if label is None else label)
    if label is None:
        datum.ClearField("label")
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """The Datum's values as a C x H x W array (netcompress.data.transformer's reading, with its checks): uint8
    from `data`, a writable copy; float64 from `float_data`, as pycaffe returns them (the label is
    `datum.label`)."""
    arr = _datum_to_array(datum)
    return arr.copy() if arr.dtype == np.uint8 else arr.astype(np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Pre-processing
# ----------------------------------------------------------------------------------------------------------------

def _indices(order, who: str) -> list[int]:
    """`order`'s entries as ints, or a TypeError naming `who`."""
    values = [np.asarray(i).item() if np.ndim(i) == 0 else None for i in order]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{who} takes integers, got {tuple(order)}")
    return values


def _scale(scale, who: str) -> float:
    """A finite real factor (a NaN or infinite one would only make every input NaN or infinite)."""
    value = np.asarray(scale)
    if value.ndim or value.dtype.kind not in "iuf" or not np.isfinite(value):
        raise ValueError(f"{who} takes a finite number, got {scale!r}")
    return scale


class Transformer:
    """Turns H x W x K images into a net's K x H x W inputs (and back): `inputs` maps input names to the blob
    shapes (`{name: net.blobs[name].data.shape}`). `preprocess` converts to float32, resizes to the input's
    height and width, transposes, swaps channels, multiplies by raw_scale, subtracts the mean and multiplies by
    input_scale, in that order; `deprocess` undoes it."""

    def __init__(self, inputs: dict[str, Sequence[int]]):
        if not isinstance(inputs, dict):
            raise TypeError(f"Transformer takes {{input name: blob shape}}, got {type(inputs).__name__}")
        for name, shape in inputs.items():
            if not (isinstance(shape, (tuple, list, np.ndarray)) and np.ndim(shape) == 1 and len(shape) >= 2
                    and all(isinstance(np.asarray(d).item(), int) and d >= 0 for d in shape)):
                raise ValueError(f"Transformer: the shape of input {name!r} must be a blob shape, e.g. (N, K, H, W); "
                                 f"got {shape!r}")
        self.inputs = inputs
        self.transpose: dict[str, Sequence[int]] = {}
        self.channel_swap: dict[str, Sequence[int]] = {}
        self.raw_scale: dict[str, float] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, float] = {}

    def __check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise ValueError(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """(H' x W' x K) image -> (K x H x W) float32 input for blob `in_`."""
        self.__check_input(in_)
        caffe_in = np.array(real_array(data, "Transformer.preprocess"), dtype=np.float32)
        transpose = self.transpose.get(in_)
        if transpose is not None and caffe_in.ndim != len(transpose):
            raise ValueError(f"Transformer.preprocess: the image for '{in_}' has shape {list(caffe_in.shape)}; its "
                             f"transpose {tuple(transpose)} takes {len(transpose)} axes")
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = tuple(self.inputs[in_][2:])
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            try:
                np.broadcast_shapes(caffe_in.shape, mean.shape)
            except ValueError:
                raise ValueError(f"Transformer.preprocess: the image for {in_!r} is {list(caffe_in.shape)} after the "
                                 f"transpose, its mean {list(mean.shape)} (K x H x W: is set_transpose(in_, (2, 0, 1)) "
                                 "missing?)") from None
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """The inverse of `preprocess` (without the resize); `data` is squeezed first."""
        self.__check_input(in_)
        decaf_in = np.array(data).copy().squeeze()
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        for name, scale in (("input_scale", input_scale), ("raw_scale", raw_scale)):
            if scale is not None and scale == 0:  # (pycaffe divided by it: numpy's warning, NaN and inf)
                raise ValueError(f"Transformer.deprocess: {name} of {in_!r} is 0: preprocess made every value 0, "
                                 "which cannot be undone")
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        """The axis order, e.g. (2, 0, 1) for H x W x K images to K x H x W."""
        self.__check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions as the input.")
        if sorted(_indices(order, "set_transpose")) != list(range(len(order))):
            raise ValueError(f"set_transpose takes an order of the axes 0 to {len(order) - 1}, each once; got "
                             f"{tuple(order)}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        """The channel order after the transpose, e.g. (2, 1, 0) for RGB to BGR."""
        self.__check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as the input channels.")
        if not all(0 <= i < len(order) for i in _indices(order, "set_channel_swap")):
            raise ValueError(f"set_channel_swap takes channel numbers 0 to {len(order) - 1}; got {tuple(order)}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        """The factor applied before the mean: 255 for models trained on [0, 255] images."""
        self.__check_input(in_)
        self.raw_scale[in_] = _scale(scale, "set_raw_scale")

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """The mean to subtract: one value per channel (K,), or an image (K x H x W or H x W), resized to the
        input's size when it differs."""
        self.__check_input(in_)
        mean = real_array(mean, "Transformer.set_mean")
        if not np.isfinite(mean).all():  # (every preprocessed value would be NaN or infinite)
            raise ValueError("Transformer.set_mean: the mean holds NaN or infinite values")
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
                mean = mean.reshape(ms)
            if len(ms) != 3 or mean.size == 0:
                raise ValueError("Mean shape invalid")
            if ms[0] != self.inputs[in_][1]:  # (Caffe's resized only the rows and columns; preprocess then failed)
                raise ValueError("Mean channels incompatible with input.")
            if tuple(ms) != tuple(self.inputs[in_][1:]):
                in_shape = tuple(self.inputs[in_][1:])
                m_min, m_max = mean.min(), mean.max()
                if m_max == m_min:  # a constant mean stays that constant (pycaffe divides by 0: a NaN mean)
                    mean = np.full((ms[0], *in_shape[1:]), m_min, dtype=mean.dtype)
                else:
                    with np.errstate(over="raise", invalid="raise"):
                        try:
                            span = m_max - m_min
                            normal_mean = (mean - m_min) / span
                        except FloatingPointError:
                            raise ValueError(f"Transformer.set_mean: the mean's values span [{m_min:g}, {m_max:g}], "
                                             "too wide for its type: it cannot be resized") from None
                    mean = resize_image(normal_mean.transpose((1, 2, 0)), in_shape[1:]).transpose((2, 0, 1)) * \
                        span + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        """The factor applied after the mean subtraction."""
        self.__check_input(in_)
        self.input_scale[in_] = _scale(scale, "set_input_scale")


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------

_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])  # scikit-image's rgb2gray


def _palette_is_gray(im) -> bool:
    palette = np.asarray(im.getpalette() or [], dtype=np.int64)
    if palette.size % 3:
        return False
    palette = palette.reshape(-1, 3)
    lo, hi = im.getextrema()
    used = palette[lo:hi + 1]
    return bool(used.size) and bool(np.all(used == used[:, :1]))


def _pil_array(im) -> np.ndarray:
    """The pixels as scikit-image's Pillow reader returns them (palette to L/RGB/RGBA, 1-bit to L, alpha to
    RGBA, other colour spaces to RGB)."""
    mode = im.mode
    if mode == "P":
        if "transparency" in im.info:
            im = im.convert("RGBA")
        elif _palette_is_gray(im):
            im = im.convert("L")
        else:
            im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif "A" in mode or mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "RGB", "I", "F") and not mode.startswith("I;16"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _as_float(arr: np.ndarray) -> np.ndarray:
    """scikit-image's img_as_float: unsigned integers to [0, 1], signed to [-1, 1], bool to 0/1, floats kept."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if np.issubdtype(arr.dtype, np.signedinteger):
        return np.maximum(arr.astype(np.float64) / np.iinfo(arr.dtype).max, -1.0)
    return arr.astype(np.float64)


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: H x W x 3 (RGB; a gray image repeated) with `color`, else
    H x W x 1 (a colour image to gray by scikit-image's weights); an alpha channel is dropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(filename if hasattr(filename, "read") else os.fspath(filename)) as im:
            im.seek(0)
            im.load()
            arr = _pil_array(im)
    except OSError as e:
        if e.filename is not None or isinstance(e, UnidentifiedImageError):
            raise  # (Python's and Pillow's messages name the file)
        raise UnidentifiedImageError(f"cannot read {filename!r} as an image: {e}") from None
    img = _as_float(arr)
    if not color and img.ndim >= 3:
        img = img[..., :3] @ _GRAY_WEIGHTS
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def _axis_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) interpolation weights along one axis: output pixel i samples the input at
    (i + 0.5) * n_in / n_out - 0.5; neighbours outside the image count as 0 (mode 'constant')."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if order == 0:
        idx = np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int64)  # C's round()
        ok = (idx >= 0) & (idx < n_in)
        m[rows[ok], idx[ok]] = 1.0
        return m
    lo = np.floor(x).astype(np.int64)
    w_hi = x - lo
    for idx, w in ((lo, 1.0 - w_hi), (lo + 1, w_hi)):
        ok = (idx >= 0) & (idx < n_in)
        np.add.at(m, (rows[ok], idx[ok]), w[ok])
    return m


def _resize_constant(im: np.ndarray, new_dims: Sequence[int], order: int) -> np.ndarray:
    if order not in (0, 1):
        raise NotImplementedError(f"resize_image: interp_order {order} (scikit-image's spline orders 2 to 5) is "
                                  "not implemented; orders 0 (nearest) and 1 (bilinear) are")
    rm = _axis_matrix(im.shape[0], int(new_dims[0]), order)
    cm = _axis_matrix(im.shape[1], int(new_dims[1]), order)
    out = np.einsum("ij,jkc,lk->ilc", rm, im.astype(np.float64), cm)
    return np.clip(out, 0.0, 1.0)  # scikit-image clips to the input's range, [0, 1] here


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """(H x W x K) -> (new_dims[0] x new_dims[1] x K) float32 by interpolation of `interp_order` (1: linear)."""
    im = real_array(im, "resize_image")
    if im.ndim != 3 or im.size == 0:
        raise ValueError(f"resize_image takes an H x W x K image, got an array of shape {list(im.shape)}")
    new_dims = two_dims("resize_image", "new_dims", new_dims)
    if im.shape[-1] == 1 or im.shape[-1] == 3:
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            im_std = (im - im_min) / (im_max - im_min)
            resized = _resize_constant(im_std, new_dims, interp_order) * (im_max - im_min) + im_min
        else:
            ret = np.empty((int(new_dims[0]), int(new_dims[1]), im.shape[-1]), dtype=np.float32)
            ret.fill(im_min)
            return ret
    else:
        try:
            from scipy.ndimage import zoom
        except ImportError:
            raise ImportError(f"resize_image: an image of {im.shape[-1]} channels is resized by scipy.ndimage.zoom, "
                              f"as pycaffe does; install scipy (pip install scipy) for it") from None

        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images: Sequence[np.ndarray], crop_dims: Sequence[int]) -> np.ndarray:
    """Ten crops of `crop_dims` from each (H x W x K) image, images in turn: the top-left, top-right,
    bottom-left, bottom-right and center crops (the center's corner at int(H/2 - h/2), int(W/2 - w/2)), then the
    same five mirrored left-right. Returns (10 N x h x w x K) float32."""
    h, w = two_dims("oversample", "crop_dims", crop_dims)
    images = [real_array(im, "oversample") for im in images]
    if not images:
        raise ValueError("oversample needs at least one image")
    for n, im in enumerate(images):  # (the crops' corners are image 0's, as pycaffe places them)
        if im.ndim != 3 or (n and (im.shape[0] < images[0].shape[0] or im.shape[1] < images[0].shape[1]
                                   or im.shape[2] != images[0].shape[2])):
            first = f", image 0 {list(images[0].shape)}" if n else ""
            raise ValueError(f"oversample takes H x W x K images, none smaller than the first and all of its K: "
                             f"image {n} has shape {list(im.shape)}{first}")
    height, width = images[0].shape[:2]
    if h > height or w > width:
        raise ValueError(f"oversample: crop_dims {[h, w]} are larger than the images ({height} x {width})")
    corners = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
               (int(height / 2.0 - h / 2.0), int(width / 2.0 - w / 2.0))]
    out = np.empty((10 * len(images), h, w, images[0].shape[-1]), dtype=np.float32)
    for n, im in enumerate(images):
        for k, (r, c) in enumerate(corners):
            out[10 * n + k] = im[r:r + h, c:c + w, :]
            out[10 * n + 5 + k] = out[10 * n + k, :, ::-1, :]
    return out
