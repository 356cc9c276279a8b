"""Image decoding, encoding and resizing with OpenCV's conventions, on Pillow and numpy.

Caffe reads images with OpenCV, so pixels come out in **BGR** order and mean files, `mean_value`s
and trained first-layer filters all assume BGR. Every array here is therefore HxWxC uint8 in BGR
(C = 3) or HxWx1 (grayscale), as a `cv::Mat` would hold it.

Decoding modes follow `cv::imdecode` flags: ``"native"`` (IMREAD_ANYCOLOR, what Caffe uses for an
encoded Datum without force_color/force_gray: grayscale stays one channel, alpha is dropped),
``"color"`` (IMREAD_COLOR, grayscale replicated to 3 channels) and ``"gray"`` (IMREAD_GRAYSCALE).
Known differences from OpenCV: EXIF orientation is not applied (Caffe-era OpenCV 2.4 did not
either); grayscale conversion of colour non-JPEG images uses OpenCV's cvtColor weights, where
OpenCV's PNG reader lets libpng round slightly differently (at most 1 grey level).
"""
from __future__ import annotations

import io
import os
import re

import numpy as np

from .db import DataError

__all__ = ["decode_image", "encode_image", "read_image", "resize_linear", "bgr_to_gray"]

_MODES = ("native", "color", "gray")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a declared dependency
        raise ImportError("netcompress.data needs Pillow to decode images: pip install Pillow") from e
    return Image


def bgr_to_gray(img: np.ndarray) -> np.ndarray:
    """HxWx3 BGR uint8 -> HxWx1 uint8 with OpenCV's fixed-point BGR2GRAY (14-bit weights)."""
    b, g, r = (img[..., i].astype(np.int32) for i in range(3))
    y = (b * 1868 + g * 9617 + r * 4899 + (1 << 13)) >> 14
    return y.astype(np.uint8)[..., None]


class ImageDecodeError(DataError, ValueError):
    """Bytes that are no image (an error the input caused; a ValueError as well, for the callers that skip such
    images as Caffe does)."""


def decode_image(data: bytes, mode: str = "native", name: str = "<image>") -> np.ndarray:
    """Decode JPEG/PNG/... bytes to HxWxC uint8 (BGR, or one gray channel) like cv::imdecode.

    Args:
        data: the encoded file contents.
        mode: "native", "color" or "gray" (see the module docstring).
        name: used in error messages (a file name or a DB key).
    """
    if mode not in _MODES:
        raise ValueError(f"decode_image: mode must be one of {_MODES}, got {mode!r}")
    Image = _pil()
    try:
        img = Image.open(io.BytesIO(data))
        if mode == "gray" and img.format == "JPEG" and img.mode in ("RGB", "YCbCr"):
            # Like OpenCV, let libjpeg emit the luma channel directly.
            img.draft("L", img.size)
        img.load()
    except Exception as e:  # Pillow raises several types for corrupt data
        said = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))  # (Pillow's name for our buffer)
        raise ImageDecodeError(f"Could not decode image {name}: {type(e).__name__}: {said}") from None
    arr, is_gray = _to_uint8(img)
    if mode == "gray":
        return arr if is_gray else bgr_to_gray(arr)
    if mode == "color" and is_gray:
        return np.repeat(arr, 3, axis=2)
    return arr


def _to_uint8(img) -> tuple[np.ndarray, bool]:
    """Pillow image -> (HxWxC uint8 BGR or HxWx1 gray, is_gray), dropping alpha and depth > 8."""
    m = img.mode
    if m in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        # Without IMREAD_ANYDEPTH OpenCV keeps the high byte of 16-bit samples.
        a = (a.astype(np.uint32) >> 8).astype(np.uint8) if a.dtype != np.uint8 else a
        return a[..., None], True
    if m == "F":
        return np.clip(np.asarray(img), 0, 255).astype(np.uint8)[..., None], True
    if m in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L"))[..., None], True
    if m == "P":
        pal_mode = img.palette.mode if img.palette is not None else "RGB"
        img = img.convert("RGBA" if "A" in pal_mode or "transparency" in img.info else "RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")  # RGBA, CMYK, YCbCr, ...
    rgb = np.asarray(img)
    return np.ascontiguousarray(rgb[..., ::-1]), False


# encode_image's extensions and the Pillow format each writes
ENCODINGS = {"jpg": "JPEG", "jpeg": "JPEG", "jpe": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF",
             "ppm": "PPM", "pgm": "PPM", "pbm": "PPM", "webp": "WEBP"}
ENCODINGS_SAID = "jpg, png, bmp, tiff, ppm or webp"


def encode_image(img: np.ndarray, ext: str = "png", quality: int = 95) -> bytes:
    """Encode HxWxC uint8 BGR (or HxWx1 / HxW gray) like cv::imencode (JPEG quality 95)."""
    Image = _pil()
    ext = ext.lower().lstrip(".")
    fmt = ENCODINGS.get(ext)
    if fmt is None:
        raise ValueError(f"encode_image: unsupported encoding '{ext}' (use {ENCODINGS_SAID})")
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        if a.shape[2] != 3:
            raise ValueError(f"encode_image: expected 1 or 3 channels, got {a.shape[2]}")
        pil = Image.fromarray(np.ascontiguousarray(a[..., ::-1]))  # (uint8 HxWx3: RGB; a mode argument is
        # deprecated in Pillow 11.3, the last Pillow for Python 3.9)
    else:
        pil = Image.fromarray(np.ascontiguousarray(a))  # (uint8 HxW: L)
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    pil.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def resize_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize HxWxC uint8 to (height, width) like `cv::resize(..., INTER_LINEAR)`.

    Uses OpenCV's pixel-centre mapping, edge clamping and 11-bit fixed-point weights (its scalar
    path), and its switch to area averaging for an exact 2x reduction. OpenCV's SIMD paths round
    differently in rare cases (at most 1 grey level); Pillow's filters, which antialias when
    shrinking, would differ far more.
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    sh, sw = a.shape[:2]
    if (sh, sw) == (height, width):
        return a.copy()
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_linear: target size must be positive, got {height}x{width}")
    sx, sy = sw / width, sh / height
    if sx == 2.0 and sy == 2.0:
        s = a[: 2 * height, : 2 * width].astype(np.int32)
        out = (s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2] + 2) >> 2
        return out.astype(np.uint8)
    x0, ax = _linear_taps(width, sw, sx)
    y0, ay = _linear_taps(height, sh, sy)
    x1 = np.minimum(x0 + 1, sw - 1)
    y1 = np.minimum(y0 + 1, sh - 1)
    s = a.astype(np.int64)
    # Horizontal pass in 11-bit fixed point, then vertical, then round away the 22 bits.
    rows = s[:, x0] * ax[:, 0][None, :, None] + s[:, x1] * ax[:, 1][None, :, None]
    out = rows[y0] * ay[:, 0][:, None, None] + rows[y1] * ay[:, 1][:, None, None]
    out = (out + (1 << 21)) >> 22
    return np.clip(out, 0, 255).astype(np.uint8)


def _linear_taps(dst: int, src: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    # OpenCV computes the source coordinate and the weights in float32, then rounds the
    # weights to 11-bit fixed point (saturate_cast<short>, round half to even).
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = (f - i.astype(np.float32)).astype(np.float32)
    lo = i < 0
    f[lo], i[lo] = 0.0, 0
    hi = i >= src - 1
    f[hi], i[hi] = 0.0, src - 1
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    return i, np.stack([w0, w1], axis=1)


def read_image(path: str, height: int = 0, width: int = 0, is_color: bool = True) -> np.ndarray:
    """Caffe's ReadImageToCVMat: read a file as colour (BGR) or gray, resized if both sizes > 0."""
    from ..errors import FileError
    from ..io import read_input_bytes

    try:
        data = read_input_bytes(path, "image")
    except FileError as e:
        raise FileNotFoundError(f"Could not open or find file {path} ({str(e)[len(str(path)) + 2:]})") from None
    img = decode_image(data, "color" if is_color else "gray", name=os.fspath(path))
    if height > 0 and width > 0:
        img = resize_linear(img, height, width)
    return img
