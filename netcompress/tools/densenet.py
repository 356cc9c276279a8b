"""`make_densenet`: DenseNet-BC prototxts for the MicroNet recipe (recipes-spec 4.2, 4.9, 5.9).

One generator, three forms of the same network:

- ``plain``: the teacher (depth 172, growth 30) and the fp32 student (depth 100, growth 12) of
  steps 1-2, BVLC layers only. PyTorch's BatchNorm2d becomes BatchNorm + Scale (named
  ``<bn>_scale``); convolutions have no bias; the classifier has one.
- ``student``: the quantized student of steps 4-8: every convolution but the first reads its input
  through an ``ActQuant`` layer, and every convolution (the first included) is a
  ``QuantConvolution`` with ``weight_quant_param`` (section 5.9's fragment). ``conv_type``,
  ``fc_type`` and ``act_quant`` select the other steps' variants (``MaskedConvolution`` for the
  pruning step, with all-ones mask fillers; ``QuantInnerProduct`` for the FC steps).
- ``deploy``: the merged integer net of section 4.9 (the source's ``densenet_final``):
  Convolution with integer weights, per-channel Scale, ``IntQuant`` (0..2^b-1, also the ReLU),
  Concat, average pooling 2 and the final global-size average pooling, InnerProduct without bias
  and a final Scale. Layer names are the PyTorch module paths with the last dot made an
  underscore (``dense1.0.scale1`` -> ``dense1.0_scale1``), which is what
  ``import_pth --map micronet-densenet-final`` relies on.

Architecture (bearpaw's ``models/cifar/densenet.py``): ``conv1`` 3x3 (-> init_width, default
2 x growth); ``blocks`` dense blocks of ``n = (depth - 4) // 6`` bottlenecks
``BN-ReLU-conv1x1(-> expansion x growth)-BN-ReLU-conv3x3(-> growth)``, each output concatenated to its
input; between blocks a transition ``BN-ReLU-conv1x1(-> C // compression)-avgpool 2``; the head
``BN-ReLU-avgpool(final size)-fc``. Initialisation as the source: convolutions N(0, 2/(k*k*out))
(``msra`` with ``FAN_OUT``), BN weight 1 and bias 0, the classifier PyTorch's default
U(-1/sqrt(in), 1/sqrt(in)) for weight and bias. BatchNorm uses ``eps 1e-5`` and
``moving_average_fraction 0.9`` (PyTorch's momentum 0.1).

Without data sources the net starts with an ``Input`` blob ``data`` of shape (1, C, H, W) and ends
in the logits ``fc``; with them it has TRAIN/TEST ``Data`` layers, ``SoftmaxWithLoss`` and a TEST
``Accuracy``. ``augment="micronet"`` gives the TRAIN transform of section 5.4 (mean/std to 8 digits,
the double 1/255 scaling, the AutoAugment policy with ``LAST_ONLY``, pad 4 with offsets 0..7,
mirror, Cutout 16) and the TEST transform its normalisation only.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Sequence

from .. import io as ncio
from ..cliargs import require_int_flag
from ..errors import NetcompressError
from ..layers.base import INT_MAX
from ..proto import caffe_pb2 as pb
from ._common import MAX_GENERATED_UNITS, dims_arg, run_tool

__all__ = ["DenseNetConfig", "DataSpec", "densenet_net", "densenet_summary", "describe", "DenseNetError",
           "MICRONET_MEAN", "MICRONET_STD", "main"]

FORMS = ("plain", "student", "deploy")
CONV_TYPES = ("Convolution", "MaskedConvolution", "QuantConvolution")
FC_TYPES = ("InnerProduct", "MaskedInnerProduct", "QuantInnerProduct")

# CIFAR-100 statistics of section 4.11 (the source calls the std "var").
MICRONET_MEAN = (0.49139968, 0.48215841, 0.44653091)
MICRONET_STD = (0.24703223, 0.24348513, 0.26158784)


class DenseNetError(NetcompressError):
    """The requested DenseNet cannot be built (depth, widths, input size, options)."""


@dataclasses.dataclass(frozen=True)
class DenseNetConfig:
    """DenseNet-BC hyper-parameters (bearpaw's names in comments)."""

    depth: int = 100            # depth; n = (depth - 4) // 6 bottlenecks per block
    growth: int = 12            # growthRate
    compression: int = 2        # compressionRate: a transition keeps C // compression channels
    num_classes: int = 100
    init_width: int | None = None   # conv1 output; 2 x growth when None
    expansion: int = 4          # bottleneck width = expansion x growth
    blocks: int = 3
    input_shape: tuple[int, int, int] = (3, 32, 32)

    def validate(self) -> None:
        if self.depth < 10 or (self.depth - 4) % 6:
            raise DenseNetError(f"DenseNet-BC depth must be 6n + 4 with n >= 1 (10, 16, ..., 100, 172), "
                                f"got {self.depth}")
        for field in ("growth", "compression", "num_classes", "expansion", "blocks", "init_width"):
            value = getattr(self, field)
            if value is not None:
                require_int_flag(value, field, 1, "a Caffe blob's size limit", error=DenseNetError)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1 or max(self.input_shape) > INT_MAX:
            raise DenseNetError(f"input_shape must be C,H,W with sizes from 1 to {INT_MAX}, "
                                f"got {list(self.input_shape)}")
        if self.blocks * self.n > MAX_GENERATED_UNITS:  # (else a net of millions of layers, written for hours)
            raise DenseNetError(f"{self.blocks} blocks of n = {self.n} bottlenecks (depth {self.depth}) are "
                                f"{self.blocks * self.n:,} units, more than the {MAX_GENERATED_UNITS:,} this generator "
                                "writes (DenseNet-BC-190 has 3 x 31)")

    @property
    def n(self) -> int:
        return (self.depth - 4) // 6

    @property
    def width0(self) -> int:
        return self.init_width if self.init_width is not None else 2 * self.growth


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """TRAIN/TEST Data layers (LMDB) for a train_val net."""

    train_source: str
    test_source: str
    batch_size: int = 64
    test_batch_size: int = 100
    augment: str = "none"       # "none" or "micronet"
    scale: float | None = None  # transform_param.scale for augment "none" (e.g. 1/256 for MNIST)


def _pool_out(size: int, kernel: int, stride: int) -> int:
    # Caffe's pooled size without padding: ceil((size - kernel) / stride) + 1
    return -((kernel - size) // stride) + 1


def densenet_summary(cfg: DenseNetConfig) -> dict:
    """Channel counts and spatial sizes of each stage, and the weight counts.

    Returns {"stages": [(block in, block out, transition out or None, H, W)], "final": (C, H, W),
    "conv_weights": int, "fc_weights": int}.
    """
    cfg.validate()
    c, h, w = cfg.width0, cfg.input_shape[1], cfg.input_shape[2]
    k, n = cfg.growth, cfg.n
    conv_w = cfg.width0 * cfg.input_shape[0] * 9
    stages = []
    for b in range(cfg.blocks):
        cin = c
        for _ in range(n):
            conv_w += c * cfg.expansion * k + cfg.expansion * k * k * 9
            c += k
        if max(c, cfg.expansion * k) > INT_MAX:
            raise DenseNetError(f"block {b + 1} would end with {c:,} channels (bottlenecks of {cfg.expansion * k:,}),"
                                f" more than a Caffe blob's {INT_MAX:,} values")
        out = None
        if b < cfg.blocks - 1:
            out = c // cfg.compression
            if out < 1:
                raise DenseNetError(f"transition {b + 1} would keep {out} channels of {c}")
            conv_w += c * out
            stages.append((cin, c, out, h, w))
            c = out
            if h < 2 or w < 2:
                raise DenseNetError(f"the input {cfg.input_shape[1]}x{cfg.input_shape[2]} is too small for "
                                    f"{cfg.blocks - 1} transitions (average pooling 2)")
            h, w = _pool_out(h, 2, 2), _pool_out(w, 2, 2)
        else:
            stages.append((cin, c, None, h, w))
    return {"stages": stages, "final": (c, h, w), "conv_weights": conv_w,
            "fc_weights": c * cfg.num_classes}


# -- layer builders ---------------------------------------------------------------------------

def _add(net: pb.NetParameter, name: str, type_: str, bottoms: Sequence[str], tops: Sequence[str]) -> pb.LayerParameter:
    lp = net.layer.add()
    lp.name, lp.type = name, type_
    lp.bottom.extend(bottoms)
    lp.top.extend(tops)
    return lp


class _Builder:
    def __init__(self, cfg: DenseNetConfig, form: str, conv_type: str, fc_type: str, act_quant: bool,
                 act_bits: int, weight_bits: int, fc_bits: int):
        self.cfg, self.form = cfg, form
        self.conv_type, self.fc_type, self.act_quant = conv_type, fc_type, act_quant
        self.act_bits, self.weight_bits, self.fc_bits = act_bits, weight_bits, fc_bits
        self.net = pb.NetParameter()

    # plain / student pieces
    def conv(self, name: str, bottom: str, top: str, num_output: int, kernel: int) -> None:
        deploy = self.form == "deploy"
        lp = _add(self.net, name, "Convolution" if deploy else self.conv_type, [bottom], [top])
        cp = lp.convolution_param
        cp.num_output = num_output
        cp.kernel_size.append(kernel)
        if kernel == 3:
            cp.pad.append(1)
        cp.bias_term = False
        if deploy:
            return
        cp.weight_filler.type = "msra"  # N(0, 2 / (k k out)), the source's init
        cp.weight_filler.variance_norm = pb.FillerParameter.FAN_OUT
        if lp.type == "MaskedConvolution":
            # dense masks to start pruning from (Caffe's default filler would prune everything)
            lp.dns_convolution_param.weight_mask_filler.type = "constant"
            lp.dns_convolution_param.weight_mask_filler.value = 1
        if lp.type == "QuantConvolution":
            wq = lp.weight_quant_param
            wq.bitwidth = self.weight_bits
            wq.als_iters = 100
            wq.refit = pb.WeightQuantParameter.EPOCH_START

    def bn_relu(self, prefix: str, bn: str, relu: str, bottom: str) -> str:
        """BatchNorm + Scale (+ ReLU), and ActQuant when quantizing: returns the conv's bottom."""
        lp = _add(self.net, f"{prefix}{bn}", "BatchNorm", [bottom], [f"{prefix}{bn}"])
        lp.batch_norm_param.eps = 1e-5
        lp.batch_norm_param.moving_average_fraction = 0.9  # PyTorch's momentum 0.1
        lp = _add(self.net, f"{prefix}{bn}_scale", "Scale", [f"{prefix}{bn}"], [f"{prefix}{bn}"])
        lp.scale_param.bias_term = True
        _add(self.net, f"{prefix}{relu}", "ReLU", [f"{prefix}{bn}"], [f"{prefix}{relu}"])
        return f"{prefix}{relu}"

    def act(self, prefix: str, idx: int, bottom: str) -> str:
        if not self.act_quant:
            return bottom
        lp = _add(self.net, f"{prefix}act{idx}", "ActQuant", [bottom], [f"{prefix}q{idx}"])
        lp.act_quant_param.bitwidth = self.act_bits
        lp.act_quant_param.calibrate = pb.ActQuantParameter.FIRST_TRAIN_BATCH
        return f"{prefix}q{idx}"

    # deploy pieces
    def scale(self, name: str, bottom: str, top: str) -> None:
        _add(self.net, name, "Scale", [bottom], [top]).scale_param.bias_term = True

    def quant(self, name: str, blob: str) -> None:
        lp = _add(self.net, name, "IntQuant", [blob], [blob])
        lp.int_quant_param.low = 0
        lp.int_quant_param.high = 2 ** self.act_bits - 1

    def bottleneck(self, p: str, x: str) -> str:
        k, e = self.cfg.growth, self.cfg.expansion
        if self.form == "deploy":
            self.scale(f"{p}_scale1", x, f"{p}_s1")
            self.quant(f"{p}_quant1", f"{p}_s1")
            self.conv(f"{p}_conv1", f"{p}_s1", f"{p}_c1", e * k, 1)
            self.scale(f"{p}_scale2", f"{p}_c1", f"{p}_c1")
            self.quant(f"{p}_quant2", f"{p}_c1")
            self.conv(f"{p}_conv2", f"{p}_c1", f"{p}_c2", k, 3)
            self.scale(f"{p}_scale3", f"{p}_c2", f"{p}_c2")
        else:
            b = self.act(f"{p}_", 1, self.bn_relu(f"{p}_", "bn1", "relu1", x))
            self.conv(f"{p}_conv1", b, f"{p}_c1", e * k, 1)
            b = self.act(f"{p}_", 2, self.bn_relu(f"{p}_", "bn2", "relu2", f"{p}_c1"))
            self.conv(f"{p}_conv2", b, f"{p}_c2", k, 3)
        _add(self.net, f"{p}_concat", "Concat", [x, f"{p}_c2"], [p])
        return p

    def transition(self, t: str, x: str, out: int) -> str:
        if self.form == "deploy":
            self.scale(f"{t}_scale1", x, f"{t}_s1")
            self.quant(f"{t}_quant1", f"{t}_s1")
            self.conv(f"{t}_conv1", f"{t}_s1", f"{t}_c1", out, 1)
            self._pool(f"{t}_pool", f"{t}_c1", t, 2, 2, 2)
            self.scale(f"{t}_scale2", t, t)
        else:
            b = self.act(f"{t}_", 1, self.bn_relu(f"{t}_", "bn1", "relu1", x))
            self.conv(f"{t}_conv1", b, f"{t}_c1", out, 1)
            self._pool(f"{t}_pool", f"{t}_c1", t, 2, 2, 2)
        return t

    def _pool(self, name: str, bottom: str, top: str, kh: int, kw: int, stride: int) -> None:
        pp = _add(self.net, name, "Pooling", [bottom], [top]).pooling_param
        pp.pool = pb.PoolingParameter.AVE
        if kh == kw:
            # one kernel_size, as nn.AvgPool2d(k) (micronet_score's faithful count reads it so)
            pp.kernel_size = kh
        else:
            pp.kernel_h, pp.kernel_w = kh, kw
        if stride != 1:
            pp.stride = stride

    def head(self, x: str, final: tuple[int, int, int]) -> str:
        c, h, w = final
        if self.form == "deploy":
            self.scale("scale2", x, "scale2")
            _add(self.net, "relu", "ReLU", ["scale2"], ["scale2"])
            self._pool("avgpool", "scale2", "avgpool", h, w, 1)
        else:
            b = self.bn_relu("", "bn", "relu", x)
            self._pool("avgpool", b, "avgpool", h, w, 1)
        deploy = self.form == "deploy"
        lp = _add(self.net, "fc", "InnerProduct" if deploy else self.fc_type, ["avgpool"], ["fc"])
        ip = lp.inner_product_param
        ip.num_output = self.cfg.num_classes
        if deploy:
            ip.bias_term = False  # the bias lives in scale3
            self.scale("scale3", "fc", "fc")
            return "fc"
        bound = 1.0 / math.sqrt(c)  # PyTorch's nn.Linear default for weight and bias
        for f in (ip.weight_filler, ip.bias_filler):
            f.type, f.min, f.max = "uniform", -bound, bound
        if lp.type == "MaskedInnerProduct":
            for f in (lp.dns_inner_product_param.weight_mask_filler, lp.dns_inner_product_param.bias_mask_filler):
                f.type, f.value = "constant", 1
        if lp.type == "QuantInnerProduct":
            wq = lp.weight_quant_param
            wq.bitwidth = self.fc_bits
            wq.als_iters = 100
            wq.refit = pb.WeightQuantParameter.EPOCH_START
        return "fc"


def _data_layers(net: pb.NetParameter, data: DataSpec, channels: int) -> None:
    if data.augment not in ("none", "micronet"):
        raise DenseNetError(f"augment must be 'none' or 'micronet', got '{data.augment}'")
    for flag, batch in (("batch_size", data.batch_size), ("test_batch_size", data.test_batch_size)):
        require_int_flag(batch, flag, 1, "a Caffe blob's size limit", error=DenseNetError)
    if data.scale is not None and not math.isfinite(data.scale):
        raise DenseNetError(f"scale must be a finite number, got {data.scale}")
    for phase, source, batch in ((pb.TRAIN, data.train_source, data.batch_size),
                                 (pb.TEST, data.test_source, data.test_batch_size)):
        lp = _add(net, "data", "Data", [], ["data", "label"])
        lp.include.add().phase = phase
        tp = lp.transform_param
        if data.augment == "micronet":
            if channels != 3:
                raise DenseNetError(f"augment 'micronet' normalises 3 colour channels, the input has {channels}")
            # section 5.4: (x - 255 mean) / (255 std) * (1/255), the source's double scaling
            tp.mean_value.extend(255 * m for m in MICRONET_MEAN)
            tp.std_value.extend(255 * s for s in MICRONET_STD)
            tp.scale = 1.0 / 255
            if phase == pb.TRAIN:
                tp.mirror = True
                tp.autoaugment.policy = pb.AutoAugmentParameter.MICRONET_CIFAR100
                tp.autoaugment.num_ops = 2
                tp.autoaugment.compose = pb.AutoAugmentParameter.LAST_ONLY
                tp.pad_crop.pad = 4
                tp.pad_crop.max_offset = 7
                tp.cutout_size = 16
        elif data.scale is not None:
            tp.scale = data.scale
        dp = lp.data_param
        dp.source, dp.batch_size, dp.backend = source, batch, pb.DataParameter.LMDB


def densenet_net(cfg: DenseNetConfig = DenseNetConfig(), form: str = "plain", *,
                 conv_type: str | None = None, fc_type: str | None = None, act_quant: bool | None = None,
                 act_bits: int = 4, weight_bits: int = 4, fc_bits: int = 6, data: DataSpec | None = None,
                 name: str | None = None) -> pb.NetParameter:
    """The DenseNet-BC NetParameter of `form` ("plain", "student" or "deploy"; module docstring).

    `conv_type`/`fc_type`/`act_quant` override the student's defaults (QuantConvolution,
    InnerProduct, True) or the plain net's (Convolution, InnerProduct, False); the deploy form
    takes no overrides. `act_bits` also sets the deploy IntQuant range (0..2^b-1).
    """
    if form not in FORMS:
        raise DenseNetError(f"form must be one of {', '.join(FORMS)}, got '{form}'")
    info = densenet_summary(cfg)
    student = form == "student"
    if form == "deploy" and (conv_type or fc_type or act_quant):
        raise DenseNetError("the deploy form has fixed layer types; conv_type, fc_type and act_quant "
                            "apply to the plain and student forms")
    conv_type = conv_type or ("QuantConvolution" if student else "Convolution")
    fc_type = fc_type or "InnerProduct"
    act_quant = student if act_quant is None else bool(act_quant)
    if conv_type not in CONV_TYPES:
        raise DenseNetError(f"conv_type must be one of {', '.join(CONV_TYPES)}, got '{conv_type}'")
    if fc_type not in FC_TYPES:
        raise DenseNetError(f"fc_type must be one of {', '.join(FC_TYPES)}, got '{fc_type}'")
    # the layers' own limits (ActQuant with signed: AUTO and the signed weight quantizers need a sign bit)
    for what, bits in (("act_bits", act_bits), ("weight_bits", weight_bits), ("fc_bits", fc_bits)):
        if not 2 <= bits <= 16:
            raise DenseNetError(f"{what} must lie in 2..16 (the ActQuant and QuantConvolution/QuantInnerProduct "
                                f"limits), got {bits}")
    b = _Builder(cfg, form, conv_type, fc_type, act_quant, act_bits, weight_bits, fc_bits)
    net = b.net
    net.name = name or f"DenseNet-BC-{cfg.depth}-{cfg.growth}" + ("" if form == "plain" else f"-{form}")
    C, H, W = cfg.input_shape
    if data is None:
        lp = _add(net, "data", "Input", [], ["data"])
        lp.input_param.shape.add().dim.extend([1, C, H, W])
    else:
        _data_layers(net, data, C)
    # conv1: no ActQuant (the input stays fp32), quantized weights in the student
    b.conv("conv1", "data", "conv1", cfg.width0, 3)
    x = "conv1"
    if form == "deploy":
        b.scale("scale1", "conv1", "conv1")
    for blk in range(cfg.blocks):
        for i in range(cfg.n):
            x = b.bottleneck(f"dense{blk + 1}.{i}", x)
        stage = info["stages"][blk]
        if stage[2] is not None:
            x = b.transition(f"trans{blk + 1}", x, stage[2])
    out = b.head(x, info["final"])
    if data is not None:
        _add(net, "loss", "SoftmaxWithLoss", [out, "label"], ["loss"])
        lp = _add(net, "accuracy", "Accuracy", [out, "label"], ["accuracy"])
        lp.include.add().phase = pb.TEST
    return net


def describe(cfg: DenseNetConfig, form: str) -> list[str]:
    """The lines `make_densenet` prints: stages, channels, sizes and weight counts."""
    info = densenet_summary(cfg)
    lines = [f"DenseNet-BC depth {cfg.depth}, growth {cfg.growth}, compression {cfg.compression}, "
             f"{form} form: {cfg.blocks} dense blocks of {cfg.n} bottlenecks, input "
             f"{'x'.join(map(str, cfg.input_shape))}"]
    lines.append(f"  conv1: {cfg.input_shape[0]} -> {cfg.width0} channels")
    for i, (cin, cout, tout, h, w) in enumerate(info["stages"]):
        t = f", transition -> {tout}" if tout is not None else ""
        lines.append(f"  dense{i + 1}: {cin} -> {cout} channels at {h}x{w}{t}")
    c, h, w = info["final"]
    lines.append(f"  head: {c} channels, average pooling {h}x{w}, fc {c} -> {cfg.num_classes}")
    lines.append(f"  weights: {info['conv_weights']} in convolutions, {info['fc_weights']} in fc")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """`make_densenet <out.prototxt> [--form plain|student|deploy] [--depth D] [--growth K] ...`"""
    p = argparse.ArgumentParser(
        prog="netcompress make_densenet",
        description="Write a DenseNet-BC prototxt for the MicroNet recipe: the plain teacher/student, "
                    "the quantized student (ActQuant + QuantConvolution) or the integer deploy net "
                    "(Scale + IntQuant, the source's densenet_final).")
    p.add_argument("out", help="the prototxt to write")
    p.add_argument("--form", choices=FORMS, default="plain")
    p.add_argument("--depth", type=int, default=100, help="6n+4 (100 for the student, 172 for the teacher)")
    p.add_argument("--growth", type=int, default=12, help="growth rate k (12 student, 30 teacher)")
    p.add_argument("--compression", type=int, default=2, help="a transition keeps C // compression channels")
    p.add_argument("--init-width", type=int, default=None, help="conv1 channels (default 2 x growth)")
    p.add_argument("--expansion", type=int, default=4, help="bottleneck width = expansion x growth")
    p.add_argument("--blocks", type=int, default=3, help="dense blocks (default 3)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--input", type=dims_arg("3,32,32", 3), default=(3, 32, 32), metavar="C,H,W")
    p.add_argument("--conv-type", choices=CONV_TYPES, default=None)
    p.add_argument("--fc-type", choices=FC_TYPES, default=None)
    p.add_argument("--act-quant", dest="act_quant", action="store_true", default=None,
                   help="ActQuant before every convolution but the first (student default)")
    p.add_argument("--no-act-quant", dest="act_quant", action="store_false")
    p.add_argument("--act-bits", type=int, default=4)
    p.add_argument("--weight-bits", type=int, default=4)
    p.add_argument("--fc-bits", type=int, default=6)
    p.add_argument("--train-source", help="TRAIN LMDB (with --test-source: a train_val net)")
    p.add_argument("--test-source", help="TEST LMDB")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--test-batch-size", type=int, default=100)
    p.add_argument("--augment", choices=("none", "micronet"), default="none",
                   help="micronet: the section 5.4 transform (CIFAR normalisation, AutoAugment, pad/crop, "
                        "mirror, Cutout)")
    p.add_argument("--scale", type=float, default=None, help="transform scale with --augment none")
    p.add_argument("--name", default=None, help="the net's name")

    def run(a: argparse.Namespace) -> int:
        if bool(a.train_source) != bool(a.test_source):
            raise DenseNetError("give both --train-source and --test-source, or neither")
        data = (DataSpec(a.train_source, a.test_source, a.batch_size, a.test_batch_size, a.augment, a.scale)
                if a.train_source else None)
        cfg = DenseNetConfig(a.depth, a.growth, a.compression, a.classes, a.init_width, a.expansion,
                             a.blocks, a.input)
        net = densenet_net(cfg, a.form, conv_type=a.conv_type, fc_type=a.fc_type, act_quant=a.act_quant,
                           act_bits=a.act_bits, weight_bits=a.weight_bits, fc_bits=a.fc_bits, data=data,
                           name=a.name)
        ncio.atomic_write(a.out, ncio.text_proto(net))
        for line in describe(cfg, a.form):
            print(line)
        print(f"Wrote {a.out} ({len(net.layer)} layers)")
        return 0
    return run_tool(p, argv, run)
