"""Caffe's DataTransformer: crop, mirror, mean subtraction and scaling of one record, plus the
netcompress additions of recipes-spec 5.4 (std division, AutoAugment ops, pad-and-crop, Cutout).

`transform` reproduces Caffe's arithmetic exactly: every output value is
``(x - mean) * scale`` computed in float32, the mean taken from the mean file at the *uncropped*
source position (so a crop offset applies to the mean as it does to the image) or from
`mean_value` per channel, and mirroring flips the output columns. Caffe draws, per record and in
this order, ``Rand(2)`` for the mirror (when `mirror` is set, in either phase, as Caffe does) and
then the crop offsets (TRAIN only; TEST takes the centre, ``(H - crop) / 2`` rounded down).

The additions (TransformationParameter fields 8-11) run in this order, the MicroNet one
(section 4.11): crop_size crop -> mean -> ``/ std_value`` -> `autoaugment` -> `pad_crop` -> mirror
-> `cutout_size` -> `scale`. `autoaugment`, `pad_crop` and `cutout_size` are augmentations: they act
in TRAIN only (a TEST-phase transformer leaves them out, as the source's test set had none).
With none of them set, the values are exactly Caffe's (mirror and scale commute). Their draws
follow Caffe's mirror and crop draws on the same generator, per record: the AutoAugment op
choices, probabilities and signs (`netcompress.data.autoaugment`), then the pad-crop offsets
(top, left), then the Cutout centre (row, column).

Randomness comes from the `numpy.random.Generator` the caller passes, so a data layer that seeds
one generator per batch from (seed, batch index) makes the stream of batches a pure function of
its position (see `netcompress.layers.data`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..log import get_logger
from ..proto import caffe_pb2 as pb
from .db import DataError
from .image import decode_image

log = get_logger("data")

__all__ = ["DataTransformer", "TransformError", "datum_to_array", "array_to_datum", "decode_mode",
           "cutout_box"]


class TransformError(DataError):
    """A record does not fit the transformation (size, channels, mean)."""


def cutout_box(h: int, w: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The MicroNet source's `create_cutout_mask`: a centre uniform in [0, h) x [0, w) (row drawn
    first), `size // 2` either side, clipped at the border: (top, left, bottom, right), exclusive."""
    cy = int(rng.integers(h))
    cx = int(rng.integers(w))
    return max(0, cy - size // 2), max(0, cx - size // 2), min(h, cy + size // 2), min(w, cx + size // 2)


def decode_mode(force_color: bool, force_gray: bool) -> str:
    """The cv::imdecode mode Caffe uses for an encoded Datum."""
    if force_color and force_gray:
        raise TransformError("cannot set both force_color and force_gray")
    return "color" if force_color else "gray" if force_gray else "native"


def parse_datum(value: bytes, name: str) -> pb.Datum:
    """The Datum a database record holds; `name` (a record's key and database) in the error if it holds none."""
    datum = pb.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf's DecodeError (its C++ and Python parsers raise alike)
        raise DataError(f"{name} is not a Datum: {e}") from None
    return datum


def datum_to_array(datum: pb.Datum, mode: str = "native", name: str = "the Datum") -> np.ndarray:
    """A Datum's pixels as CxHxW: uint8 for `data` (decoded when `encoded`), float32 for `float_data`. `name`:
    what error messages call it (a record's key and database, say).

    Encoded images come out in BGR order (see `netcompress.data.image`).
    """
    if datum.encoded:
        img = decode_image(datum.data, mode, name=name)
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    c, h, w = int(datum.channels), int(datum.height), int(datum.width)
    count = c * h * w
    if len(datum.data):
        if len(datum.data) != count:
            raise TransformError(f"{name}: Datum holds {len(datum.data)} bytes of data, "
                                 f"channels x height x width = {c}x{h}x{w} = {count}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != count:
        raise TransformError(f"{name}: Datum holds {len(datum.float_data)} float_data values, "
                             f"channels x height x width = {c}x{h}x{w} = {count}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def array_to_datum(arr: np.ndarray, label: int = 0) -> pb.Datum:
    """CxHxW uint8 (raw `data`) or float (float_data) -> Datum, as Caffe's CVMatToDatum lays it out."""
    a = np.asarray(arr)
    if a.ndim != 3:
        raise ValueError(f"array_to_datum: expected CxHxW, got shape {list(a.shape)}")
    if not -2**31 <= int(label) < 2**31:
        raise ValueError(f"array_to_datum: label {int(label)} is outside a Datum's 32-bit labels")
    d = pb.Datum(channels=a.shape[0], height=a.shape[1], width=a.shape[2], label=int(label))
    if a.dtype == np.uint8:
        d.data = np.ascontiguousarray(a).tobytes()
    else:
        d.float_data.extend(a.astype(np.float32).ravel().tolist())
    return d


# autoaugment.num_ops above this is refused: each record takes that many drawn ops in turn (1-3 in the policies).
MAX_AUG_OPS = 1000


class DataTransformer:
    """Caffe's DataTransformer for one `TransformationParameter` and phase.

    Args:
        param: the layer's `transform_param`.
        phase: `caffe_pb2.TRAIN` or `caffe_pb2.TEST` (random crops only in TRAIN).
        name: what error messages call the owner (e.g. "layer 'mnist' (type Data)").
    """

    def __init__(self, param: pb.TransformationParameter | None = None, phase: int = pb.TEST,
                 name: str = "DataTransformer"):
        param = param if param is not None else pb.TransformationParameter()
        self.name = name
        self.phase = phase
        for field, values in (("scale", [param.scale]), ("mean_value", param.mean_value),
                              ("std_value", param.std_value)):
            if not np.all(np.isfinite(np.asarray(values, dtype=np.float32))):  # (inf * a 0 pixel is NaN data)
                raise TransformError(f"{name}: transform_param.{field} must be finite, got "
                                     f"{[float(v) for v in values]}")
        self.scale = np.float32(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.force_color = bool(param.force_color)
        self.force_gray = bool(param.force_gray)
        self.mode = decode_mode(self.force_color, self.force_gray)
        if param.mean_file and len(param.mean_value):
            raise TransformError(f"{name}: Cannot specify mean_file and mean_value at the same time")
        self.mean: np.ndarray | None = None
        self.mean_file = param.mean_file
        if param.mean_file:
            from ..io import read_binaryproto_array

            log.info("Loading mean file from: %s", param.mean_file)
            m = read_binaryproto_array(param.mean_file).astype(np.float32)
            if m.ndim == 4 and m.shape[0] == 1:
                m = m[0]
            if m.ndim != 3:
                raise TransformError(f"{name}: mean file {param.mean_file} holds a blob of shape "
                                     f"{list(m.shape)}, expected 1xCxHxW")
            self.mean = np.ascontiguousarray(m)
        self.mean_values = np.asarray(list(param.mean_value), dtype=np.float32)
        self._warned_force = False
        self._init_additions(param)

    def _init_additions(self, param: pb.TransformationParameter) -> None:
        """Read fields 8-11 (std_value, autoaugment, pad_crop, cutout_size) once."""
        name = self.name
        self.std_values = np.asarray(list(param.std_value), dtype=np.float32)
        if np.any(self.std_values == 0):
            raise TransformError(f"{name}: std_value must be non-zero, got {list(map(float, param.std_value))}")
        # AutoAugment: a named policy or explicit ops (not both).
        self.aug_ops: list = []  # autoaugment.AugOpSpec
        self.aug_num = 0
        self.aug_last_only = False
        if param.HasField("autoaugment"):
            from . import autoaugment as aug  # Pillow, only when a net augments

            ap = param.autoaugment
            ops = [aug.AugOpSpec(o.name, float(o.prob), int(o.level)) for o in ap.op]
            if ap.policy == pb.AutoAugmentParameter.MICRONET_CIFAR100:
                if ops:
                    raise TransformError(f"{name}: autoaugment has policy MICRONET_CIFAR100 and {len(ops)} "
                                         "op entries; give the policy or the ops, not both")
                ops = list(aug.MICRONET_CIFAR100)
            for op in ops:
                try:
                    aug.check_op(op)
                except aug.AutoAugmentError as e:
                    raise TransformError(f"{name}: {e}") from None
            if ops:
                if not 1 <= ap.num_ops <= MAX_AUG_OPS:  # (2^31 - 1 ops per record ran for ever)
                    raise TransformError(f"{name}: autoaugment.num_ops must lie in [1, {MAX_AUG_OPS:,}] (ops "
                                         f"applied to each record in turn; policies use 1-3), got {ap.num_ops}")
                self.aug_ops, self.aug_num = ops, int(ap.num_ops)
                self.aug_last_only = ap.compose == pb.AutoAugmentParameter.LAST_ONLY
        # Pad (with zeros) and crop back to the same size at a random offset.
        self.pad = 0
        self.pad_before_mean = False
        self.max_offset = 0
        if param.HasField("pad_crop"):
            pc = param.pad_crop
            self.pad = int(pc.pad)
            self.max_offset = int(pc.max_offset) if pc.max_offset else 2 * self.pad
            if self.max_offset > 2 * self.pad:
                raise TransformError(f"{name}: pad_crop.max_offset {self.max_offset} is larger than 2 * pad "
                                     f"= {2 * self.pad}; the crop would leave the padded image")
            self.pad_before_mean = pc.fill == pb.PadCropParameter.ZERO_BEFORE_MEAN
            if self.pad_before_mean and self.mean is not None:
                raise TransformError(f"{name}: pad_crop.fill ZERO_BEFORE_MEAN needs mean_value; a mean_file "
                                     "has no values for the padded border")
        self.cutout_size = int(param.cutout_size)
        if self.phase != pb.TRAIN and (self.aug_ops or self.pad or self.cutout_size):
            log.info("%s: autoaugment, pad_crop and cutout_size act in TRAIN only; this TEST transformer "
                     "leaves them out", name)

    @property
    def augments(self) -> bool:
        """Whether TRAIN-only augmentations (autoaugment, pad_crop, cutout) run on each record."""
        return self.phase == pb.TRAIN and bool(self.aug_ops or self.pad or self.cutout_size)

    # -- shapes ----------------------------------------------------------------------------
    @property
    def needs_rand(self) -> bool:
        """Whether `transform` draws random numbers (Caffe's InitRand condition)."""
        return self.mirror or (self.phase == pb.TRAIN and self.crop_size > 0) or self.augments

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """C, H, W of the output for a CxHxW input (Caffe's InferBlobShape)."""
        c, h, w = (int(d) for d in shape)
        if c <= 0:
            raise TransformError(f"{self.name}: a record has {c} channels")
        if h <= 0 or w <= 0:
            raise TransformError(f"{self.name}: a record is {c}x{h}x{w} (channels x height x width): it holds no "
                                 "pixels")
        if h < self.crop_size or w < self.crop_size:
            raise TransformError(f"{self.name}: crop_size {self.crop_size} is larger than the "
                                 f"record ({h}x{w})")
        if self.augments and self.aug_ops and c not in (1, 3):
            raise TransformError(f"{self.name}: autoaugment works on 1- or 3-channel records "
                                 f"(PIL images), these have {c}")
        if self.crop_size:
            return c, self.crop_size, self.crop_size
        return c, h, w

    def datum_array(self, datum: pb.Datum, name: str = "the Datum") -> np.ndarray:
        """The Datum's CxHxW pixels, decoded with force_color/force_gray when encoded."""
        if not datum.encoded and (self.force_color or self.force_gray) and not self._warned_force:
            self._warned_force = True
            log.error("force_color and force_gray only for encoded datum")
        return datum_to_array(datum, self.mode, name)

    # -- the transformation ----------------------------------------------------------------
    def draw(self, shape: Sequence[int], rng: np.random.Generator | None) -> tuple[bool, int, int]:
        """Caffe's random decisions for one record of `shape`: (mirror, h_off, w_off)."""
        _, h, w = (int(d) for d in shape)
        if self.needs_rand and rng is None:
            raise TransformError(f"{self.name}: mirror / TRAIN crop / augmentation needs a random generator")
        do_mirror = bool(self.mirror and rng.integers(2))
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == pb.TRAIN:
                h_off = int(rng.integers(h - self.crop_size + 1))
                w_off = int(rng.integers(w - self.crop_size + 1))
            else:
                h_off = (h - self.crop_size) // 2
                w_off = (w - self.crop_size) // 2
        return do_mirror, h_off, w_off

    def transform(self, x: np.ndarray, rng: np.random.Generator | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """Transform one CxHxW record (uint8 or float) into float32 C x H' x W'.

        Args:
            x: the record, CxHxW (an HxWxC image must be transposed first).
            rng: source of the mirror and TRAIN-crop draws (needed when `needs_rand`).
            out: optional float32 array of the output shape to write into.
        """
        x = np.asarray(x)
        if x.ndim != 3:
            raise TransformError(f"{self.name}: expected a CxHxW record, got shape {list(x.shape)}")
        c, h, w = x.shape
        oc, oh, ow = self.output_shape(x.shape)
        do_mirror, h_off, w_off = self.draw(x.shape, rng)
        src = x[:, h_off:h_off + oh, w_off:w_off + ow].astype(np.float32)
        mean = None  # what was subtracted, kept for the AutoAugment ops' de-normalisation
        if self.mean is not None:
            if tuple(self.mean.shape) != (c, h, w):
                raise TransformError(
                    f"{self.name}: the mean file {self.mean_file} is {'x'.join(map(str, self.mean.shape))} "
                    f"(CxHxW), the record is {c}x{h}x{w}; they must match")
            mean = self.mean[:, h_off:h_off + oh, w_off:w_off + ow]
            src = src - mean
        elif self.mean_values.size:
            mv = self.mean_values
            if mv.size not in (1, c):
                raise TransformError(f"{self.name}: Specify either 1 mean_value or as many as "
                                     f"channels: {c} (got {mv.size})")
            mean = (mv if mv.size == c else np.repeat(mv, c))[:, None, None]
            src = src - mean
        std = None
        if self.std_values.size:
            sv = self.std_values
            if sv.size not in (1, c):
                raise TransformError(f"{self.name}: Specify either 1 std_value or as many as "
                                     f"channels: {c} (got {sv.size})")
            std = (sv if sv.size == c else np.repeat(sv, c))[:, None, None]
            src = src / std
        if self.augments:
            src = self._augment(src, mean, std, rng)
        if do_mirror:
            src = src[:, :, ::-1]
        if self.augments and self.cutout_size:
            top, left, bottom, right = cutout_box(oh, ow, self.cutout_size, rng)
            src = np.array(src)
            src[:, top:bottom, left:right] = 0.0
        src = src * self.scale
        if out is None:
            return np.ascontiguousarray(src, dtype=np.float32)
        out[...] = src
        return out

    def _augment(self, x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
                 rng: np.random.Generator) -> np.ndarray:
        """AutoAugment ops, then pad-and-crop, on a normalised CxHxW record (before mirror)."""
        c, h, w = x.shape
        if self.aug_ops:
            from . import autoaugment as aug

            if c not in (1, 3):
                raise TransformError(f"{self.name}: autoaugment works on 1- or 3-channel records "
                                     f"(PIL images), this one has {c}")
            m = np.zeros((c, 1, 1), np.float32) if mean is None else mean
            s = np.ones((c, 1, 1), np.float32) if std is None else std
            y = x
            for _ in range(self.aug_num):
                op = aug.choose(self.aug_ops, rng)
                # LAST_ONLY (the source's quirk, Q14): every pick starts from the original record,
                # so only the last survives; the earlier ones still consume their draws.
                y = aug.apply_op(x if self.aug_last_only else y, op, rng, m, s)
            x = y
        if self.pad:
            p = self.pad
            top = int(rng.integers(self.max_offset + 1))
            left = int(rng.integers(self.max_offset + 1))
            if self.pad_before_mean:
                # tensorpack's CenterPaste: zero pixels, then mean (and std) like the image
                mv = np.zeros((c, 1, 1), np.float32) if mean is None else mean
                fill = (np.float32(0) - mv) / (np.float32(1) if std is None else std)
            else:
                fill = np.zeros((c, 1, 1), np.float32)
            # The h x w window at (top, left) of the record padded by p, without the padded record (a pad of 10^5
            # asked for 149 GiB): the fill, and the record where it overlaps the window (row r at r - dy).
            out = np.empty((c, h, w), np.float32)
            out[...] = fill
            dy, dx = top - p, left - p
            ys, ye, xs, xe = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
            if ys < ye and xs < xe:
                out[:, ys - dy:ye - dy, xs - dx:xe - dx] = x[:, ys:ye, xs:xe]
            x = out
        return x

    @property
    def scale_only(self) -> bool:
        """Whether `transform` is the cast to float32 and the scale alone (no mean, std, crop, mirror or
        augmentation, so no random draws): a batch of records can then go through `scale_batch` at once."""
        return (not self.needs_rand and not self.augments and not self.crop_size and self.mean is None
                and not self.mean_values.size and not self.std_values.size)

    def scale_batch(self, x: np.ndarray) -> np.ndarray:
        """`transform` of every record of an N x C x H x W batch when `scale_only`: the same float32 operations
        element by element (hence the same values), in one pass instead of one call per record."""
        return np.ascontiguousarray(x.astype(np.float32) * self.scale, dtype=np.float32)

    def transform_datum(self, datum: pb.Datum, rng: np.random.Generator | None = None,
                        name: str = "the Datum") -> np.ndarray:
        """Decode (if encoded) and transform one Datum into float32 CxH'xW'."""
        return self.transform(self.datum_array(datum, name), rng)

    def transform_image(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transform an HxWxC (BGR) or HxW image, as Caffe's cv::Mat overload does."""
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[..., None]
        return self.transform(a.transpose(2, 0, 1), rng)
