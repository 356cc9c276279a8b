"""AutoAugment-style PIL operations of the MicroNet CIFAR-100 pipeline (recipes-spec 4.11, 5.4).

An op works on one record in normalised space (after mean and std, before `scale`), as the
source's `apply_policy` did:

- *wrap*: de-normalise to pixels (``x * std + mean``), round to uint8 and make an RGBA image;
- apply the op with probability `prob` (one uniform draw, ``u < prob``);
- *unwrap*: re-normalise (``(p - mean) / std``); pixels whose alpha is 0 (the fill of Rotate,
  Shear, Translate and the Cutout op) become 0, i.e. the mean colour (`fill: MEAN`).

Magnitudes follow the source's `int_parameter(l, m) = int(l*m/10)` and
`float_parameter(l, m) = l*m/10`: Rotate level 1 is +-3 degrees, Solarize level 4 inverts from
256 - 102 = 154 up, Posterize level 2 keeps 4 bits, the enhance ops use ``1.8*l/10 + 0.1`` (level 5
is 1.0: Color and Brightness of the MicroNet policy change nothing).

Deliberate differences from the source (`augmentation_transform.py`):
- *wrap* rounds to the nearest pixel (and clips to [0, 255]); the source truncated, which turns
  the float error of its normalise/de-normalise round trip into a one-level darkening of about
  half the pixels. A record the op leaves alone (probability draw failed) is not wrapped at all.
- Images of any H x W work (the source hard-coded 32 x 32); the Cutout op's box is placed with
  rows from the first draw and columns from the second (the source indexed PIL's [x, y] with the
  row range, the same distribution on square images).
- One-channel records are treated as grey RGB images and come back as one channel.
- Channels are handed to PIL in record order as R, G, B. That matters only for the luminance
  weights of Color and Contrast; a BGR record (an encoded image decoded by OpenCV) gives them
  slightly different weights.

Randomness (op choice, probability, sign, the Cutout op's centre) comes from the
`numpy.random.Generator` the DataTransformer is given, so it is a pure function of the data
layer's (seed, batch) like the crop and mirror draws.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from .transformer import cutout_box

__all__ = ["AugOpSpec", "MICRONET_CIFAR100", "OP_NAMES", "int_parameter", "float_parameter",
           "enhance_factor", "op_magnitude", "check_op", "apply_op", "choose", "wrap",
           "unwrap", "AutoAugmentError"]

PARAMETER_MAX = 10  # the highest level of the source's policies


class AutoAugmentError(ValueError):
    """An op name, level or probability the transform cannot use."""


@dataclasses.dataclass(frozen=True)
class AugOpSpec:
    """One policy tuple (name, probability, level)."""

    name: str
    prob: float
    level: int


# The 15 one-op policies of the source's transform.py (section 4.11; its README says 14).
MICRONET_CIFAR100: tuple[AugOpSpec, ...] = tuple(AugOpSpec(n, p, l) for n, p, l in (
    ("Invert", 0.2, 2), ("Contrast", 0.4, 4), ("Rotate", 0.5, 1), ("TranslateX", 0.4, 3),
    ("Sharpness", 0.5, 3), ("ShearY", 0.3, 4), ("TranslateY", 0.6, 8), ("AutoContrast", 0.6, 3),
    ("Equalize", 0.5, 5), ("Solarize", 0.4, 4), ("Color", 0.5, 5), ("Posterize", 0.2, 2),
    ("Brightness", 0.4, 5), ("Cutout", 0.3, 3), ("ShearX", 0.1, 3),
))


def int_parameter(level: int, maxval: float) -> int:
    """The source's `int_parameter`: int(level * maxval / 10), truncating."""
    return int(level * maxval / PARAMETER_MAX)


def float_parameter(level: int, maxval: float) -> float:
    """The source's `float_parameter`: level * maxval / 10."""
    return float(level) * maxval / PARAMETER_MAX


def enhance_factor(level: int) -> float:
    """Factor of Color/Contrast/Brightness/Sharpness: 1.8 * level / 10 + 0.1 (level 5 -> 1.0)."""
    return float_parameter(level, 1.8) + .1


# -- the ops: (RGBA image, level, rng) -> RGBA image --------------------------------------------

def _rgb_op(fn: Callable[[Image.Image], Image.Image]):
    # ImageOps functions want RGB; the result is opaque again (alpha 255), as in the source.
    return lambda im, level, rng: fn(im.convert("RGB")).convert("RGBA")


def _signed(value, rng: np.random.Generator):
    # The source: `if random.random() > 0.5: value = -value`.
    return -value if rng.random() > 0.5 else value


def _rotate(im: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    return im.rotate(_signed(int_parameter(level, 30), rng))


def _posterize(im: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    return ImageOps.posterize(im.convert("RGB"), 4 - int_parameter(level, 4)).convert("RGBA")


def _solarize(im: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    return ImageOps.solarize(im.convert("RGB"), 256 - int_parameter(level, 256)).convert("RGBA")


def _crop_bilinear(im: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    # The source crops `level` pixels (not a scaled magnitude) from each side and resizes back.
    w, h = im.size
    return im.crop((level, level, w - level, h - level)).resize((w, h), Image.Resampling.BILINEAR)


def _enhancer(cls):
    return lambda im, level, rng: cls(im).enhance(enhance_factor(level))


def _shear_x(im, level, rng):
    v = _signed(float_parameter(level, 0.3), rng)
    return im.transform(im.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0))


def _shear_y(im, level, rng):
    v = _signed(float_parameter(level, 0.3), rng)
    return im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0))


def _translate_x(im, level, rng):
    v = _signed(int_parameter(level, 10), rng)
    return im.transform(im.size, Image.Transform.AFFINE, (1, 0, v, 0, 1, 0))


def _translate_y(im, level, rng):
    v = _signed(int_parameter(level, 10), rng)
    return im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, v))


def _cutout_op(im: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    size = int_parameter(level, 20)
    if size <= 0:
        return im
    w, h = im.size
    top, left, bottom, right = cutout_box(h, w, size, rng)
    a = np.array(im)
    # The source paints (125, 122, 113, 0); alpha 0 makes the colour irrelevant after unwrap.
    a[top:bottom, left:right] = (125, 122, 113, 0)
    return Image.fromarray(a)  # (uint8 HxWx4: RGBA; no mode argument, deprecated in Pillow 11.3)


_OPS: dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "identity": lambda im, level, rng: im,
    "FlipLR": lambda im, level, rng: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "FlipUD": lambda im, level, rng: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "AutoContrast": _rgb_op(ImageOps.autocontrast),
    "Equalize": _rgb_op(ImageOps.equalize),
    "Invert": _rgb_op(ImageOps.invert),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "CropBilinear": _crop_bilinear,
    "Solarize": _solarize,
    "Color": _enhancer(ImageEnhance.Color),
    "Contrast": _enhancer(ImageEnhance.Contrast),
    "Brightness": _enhancer(ImageEnhance.Brightness),
    "Sharpness": _enhancer(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout_op,
    "Blur": lambda im, level, rng: im.filter(ImageFilter.BLUR),
    "Smooth": lambda im, level, rng: im.filter(ImageFilter.SMOOTH),
}
OP_NAMES: tuple[str, ...] = tuple(_OPS)


def op_magnitude(name: str, level: int) -> float | int | None:
    """The magnitude an op uses at `level` (before its random sign): degrees, pixels, shear,
    Solarize threshold, Posterize bits kept, enhance factor, Cutout-op side; None if it has none."""
    if name == "Rotate":
        return int_parameter(level, 30)
    if name in ("TranslateX", "TranslateY"):
        return int_parameter(level, 10)
    if name in ("ShearX", "ShearY"):
        return float_parameter(level, 0.3)
    if name == "Solarize":
        return 256 - int_parameter(level, 256)
    if name == "Posterize":
        return 4 - int_parameter(level, 4)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return enhance_factor(level)
    if name == "Cutout":
        return int_parameter(level, 20)
    if name == "CropBilinear":
        return level
    if name in _OPS:
        return None
    raise AutoAugmentError(f"unknown AutoAugment op '{name}' (known: {', '.join(OP_NAMES)})")


def check_op(op: AugOpSpec) -> None:
    """Refuse what the source could not run: unknown names, probabilities outside [0, 1],
    negative levels, and Posterize levels that would keep fewer than 0 bits."""
    op_magnitude(op.name, op.level)
    if not 0.0 <= op.prob <= 1.0:
        raise AutoAugmentError(f"AutoAugment op '{op.name}': prob must lie in [0, 1], got {op.prob}")
    if op.level < 0:
        raise AutoAugmentError(f"AutoAugment op '{op.name}': level must be >= 0, got {op.level}")
    if op.name == "Posterize" and 4 - int_parameter(op.level, 4) < 0:
        raise AutoAugmentError(f"AutoAugment op 'Posterize': level {op.level} keeps a negative "
                               "number of bits; levels 0..12 are valid")


# -- wrap / unwrap ------------------------------------------------------------------------------

def wrap(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Image.Image:
    """Normalised CxHxW (C = 1 or 3) -> RGBA image of the pixels ``x * std + mean``, rounded."""
    p = x.astype(np.float64) * std.astype(np.float64) + mean.astype(np.float64)
    p = np.clip(np.rint(p), 0, 255).astype(np.uint8)
    if p.shape[0] == 1:
        p = np.repeat(p, 3, axis=0)
    return Image.fromarray(np.ascontiguousarray(p.transpose(1, 2, 0))).convert("RGBA")  # (uint8: RGB)


def unwrap(im: Image.Image, mean: np.ndarray, std: np.ndarray, channels: int) -> np.ndarray:
    """RGBA image -> normalised float32 CxHxW; pixels with alpha 0 become 0 (the mean colour).

    In float32, as the transformer normalises, so a pixel the op leaves alone comes back with the
    bits it had."""
    a = np.asarray(im)  # H x W x 4 uint8
    p = a[:, :, :channels].transpose(2, 0, 1).astype(np.float32)
    out = (p - mean.astype(np.float32)) / std.astype(np.float32)
    out[:, a[:, :, 3] == 0] = 0.0
    return np.ascontiguousarray(out, dtype=np.float32)


def apply_op(x: np.ndarray, op: AugOpSpec, rng: np.random.Generator, mean: np.ndarray,
             std: np.ndarray) -> np.ndarray:
    """Apply one policy tuple to a normalised CxHxW record (see the module docstring).

    `mean` and `std` (float32) broadcast against x: per channel (C,1,1), or a per-pixel mean
    CxHxW; they are what the transformer subtracted and divided by.
    Draws: one uniform for the probability, then the op's own (sign, or the Cutout op's centre).
    """
    if not rng.random() < op.prob:
        return x
    im = _OPS[op.name](wrap(x, mean, std), int(op.level), rng)
    return unwrap(im, mean, std, x.shape[0])


def choose(ops: Sequence[AugOpSpec], rng: np.random.Generator) -> AugOpSpec:
    """One policy tuple, uniformly (the source's `np.random.choice(len(policies))`)."""
    return ops[int(rng.integers(len(ops)))]
