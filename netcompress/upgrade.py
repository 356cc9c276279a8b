"""Upgrading legacy Caffe files, with the rules of Caffe's `upgrade_proto`.

- V0 nets (`layers { layer { type: "conv" ... } }`, including "padding" layers) go to V1;
- V1 nets (`layers { type: CONVOLUTION ... }`, `blobs_lr`, `weight_decay`) go to current `layer`;
- transformation fields of Data/ImageData/WindowData move into `transform_param`;
- net-level `input` / `input_dim` / `input_shape` become an `Input` layer placed first;
- old BatchNorm layers with three `param` entries get lr_mult = decay_mult = 0;
- solver `solver_type` enums become `type` strings (including the fork's LARSSGD, which the fork
  itself could not upgrade: netcompress maps it to "LarsSGD").
"""
from __future__ import annotations

import argparse
from typing import Sequence

from .errors import NetDefinitionError
from .log import get_logger
from .proto import caffe_pb2 as pb

log = get_logger("upgrade")

__all__ = ["net_needs_upgrade", "upgrade_net", "upgrade_solver", "V1_TYPE_NAMES", "main"]

# V1LayerParameter.LayerType enum name -> current type string.
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type string -> V1 enum name.
_V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU",
    "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT",
    "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type: (V1 sub-message, field, repeated?)}; "*" applies to every type.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output", False),
                   "innerproduct": ("inner_product_param", "num_output", False)},
    "biasterm": {"conv": ("convolution_param", "bias_term", False),
                 "innerproduct": ("inner_product_param", "bias_term", False)},
    "weight_filler": {"conv": ("convolution_param", "weight_filler", False),
                      "innerproduct": ("inner_product_param", "weight_filler", False)},
    "bias_filler": {"conv": ("convolution_param", "bias_filler", False),
                    "innerproduct": ("inner_product_param", "bias_filler", False)},
    "pad": {"conv": ("convolution_param", "pad", True), "pool": ("pooling_param", "pad", False)},
    "kernelsize": {"conv": ("convolution_param", "kernel_size", True),
                   "pool": ("pooling_param", "kernel_size", False)},
    "group": {"conv": ("convolution_param", "group", False)},
    "stride": {"conv": ("convolution_param", "stride", True),
               "pool": ("pooling_param", "stride", False)},
    "pool": {"pool": ("pooling_param", "pool", False)},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio", False)},
    "local_size": {"lrn": ("lrn_param", "local_size", False)},
    "alpha": {"lrn": ("lrn_param", "alpha", False)},
    "beta": {"lrn": ("lrn_param", "beta", False)},
    "k": {"lrn": ("lrn_param", "k", False)},
    "source": {"data": ("data_param", "source", False),
               "hdf5_data": ("hdf5_data_param", "source", False),
               "images": ("image_data_param", "source", False),
               "window_data": ("window_data_param", "source", False),
               "infogain_loss": ("infogain_loss_param", "source", False)},
    "scale": {"*": ("transform_param", "scale", False)},
    "meanfile": {"*": ("transform_param", "mean_file", False)},
    "batchsize": {"data": ("data_param", "batch_size", False),
                  "hdf5_data": ("hdf5_data_param", "batch_size", False),
                  "images": ("image_data_param", "batch_size", False),
                  "window_data": ("window_data_param", "batch_size", False)},
    "cropsize": {"*": ("transform_param", "crop_size", False)},
    "mirror": {"*": ("transform_param", "mirror", False)},
    "rand_skip": {"data": ("data_param", "rand_skip", False),
                  "images": ("image_data_param", "rand_skip", False)},
    "shuffle_images": {"images": ("image_data_param", "shuffle", False)},
    "new_height": {"images": ("image_data_param", "new_height", False)},
    "new_width": {"images": ("image_data_param", "new_width", False)},
    "concat_dim": {"concat": ("concat_param", "concat_dim", False)},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold", False)},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold", False)},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction", False)},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad", False)},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode", False)},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None, False)},
}

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_TYPES_V1 = {pb.V1LayerParameter.DATA: "data_param",
                  pb.V1LayerParameter.IMAGE_DATA: "image_data_param",
                  pb.V1LayerParameter.WINDOW_DATA: "window_data_param"}


def net_needs_upgrade(net: pb.NetParameter) -> bool:
    return (len(net.layers) > 0 or len(net.input) > 0 or _needs_batchnorm_upgrade(net))


def upgrade_net(net: pb.NetParameter, path: str = "<net>") -> pb.NetParameter:
    """Upgrade `net` in place to the current format (returns it)."""
    if any(layer.HasField("layer") for layer in net.layers):
        log.info("Attempting to upgrade input file specified using deprecated V0LayerParameter: %s", path)
        _upgrade_v0(net, path)
    if any(_v1_has_data_fields(layer) for layer in net.layers):
        log.info("Attempting to upgrade input file specified using deprecated transformation "
                 "parameters: %s", path)
        for layer in net.layers:
            _move_transform_fields(layer)
    if len(net.layers):
        log.info("Attempting to upgrade input file specified using deprecated V1LayerParameter: %s", path)
        if len(net.layer):
            raise NetDefinitionError(f"{path}: refusing to upgrade a net that has both V1 `layers` "
                                     "and current `layer` entries")
        for v1 in net.layers:
            _upgrade_v1_layer(v1, net.layer.add(), path)
        del net.layers[:]
    if len(net.input):
        log.info("Attempting to upgrade input file specified using deprecated input fields: %s", path)
        _upgrade_input(net, path)
    if _needs_batchnorm_upgrade(net):
        log.info("Attempting to upgrade batch norm layers using deprecated params: %s", path)
        for layer in net.layer:
            if layer.type == "BatchNorm" and len(layer.param) == 3:
                for p in layer.param:
                    p.lr_mult = 0.0
                    p.decay_mult = 0.0
    return net


def _v1_has_data_fields(layer: pb.V1LayerParameter) -> bool:
    sub = _DATA_TYPES_V1.get(layer.type)
    if sub is None:
        return False
    msg = getattr(layer, sub)
    return any(msg.HasField(f) for f in _TRANSFORM_FIELDS)


def _move_transform_fields(layer: pb.V1LayerParameter) -> None:
    sub = _DATA_TYPES_V1.get(layer.type)
    if sub is None:
        return
    msg = getattr(layer, sub)
    for f in _TRANSFORM_FIELDS:
        if msg.HasField(f):
            setattr(layer.transform_param, f, getattr(msg, f))
            msg.ClearField(f)


def _upgrade_v0(net: pb.NetParameter, path: str) -> None:
    # Fold "padding" layers into the conv/pool layer that consumes them.
    last_top: dict[str, int] = {name: -1 for name in net.input}
    old = [pb.V1LayerParameter() for _ in net.layers]
    for o, layer in zip(old, net.layers):
        o.CopyFrom(layer)
    kept: list[pb.V1LayerParameter] = []
    for i, conn in enumerate(old):
        v0 = conn.layer
        if v0.type != "padding":
            kept.append(pb.V1LayerParameter())
            kept[-1].CopyFrom(conn)
        for j, bottom in enumerate(conn.bottom):
            if bottom not in last_top:
                raise NetDefinitionError(f"{path}: unknown bottom blob '{bottom}' of V0 layer "
                                         f"'{v0.name}'")
            src = last_top[bottom]
            if src >= 0 and old[src].layer.type == "padding":
                if v0.type not in ("conv", "pool") or len(conn.bottom) != 1:
                    raise NetDefinitionError(f"{path}: padding layer '{old[src].layer.name}' feeds "
                                             f"'{v0.name}' of type '{v0.type}'; only single-input "
                                             "conv and pool layers can absorb padding")
                kept[-1].layer.pad = old[src].layer.pad
                kept[-1].bottom[j] = old[src].bottom[0]
        for top in conn.top:
            last_top[top] = i
    del net.layers[:]
    for conn in kept:
        v1 = net.layers.add()
        _upgrade_v0_layer(conn, v1, path)


def _upgrade_v0_layer(conn: pb.V1LayerParameter, v1: pb.V1LayerParameter, path: str) -> None:
    v1.bottom.extend(conn.bottom)
    v1.top.extend(conn.top)
    v0 = conn.layer
    if v0.HasField("name"):
        v1.name = v0.name
    t = v0.type
    if v0.HasField("type"):
        if t not in _V0_TYPES:
            raise NetDefinitionError(f"{path}: unknown V0 layer type '{t}' in layer '{v0.name}'; "
                                     f"known: {', '.join(sorted(_V0_TYPES))}")
        v1.type = pb.V1LayerParameter.LayerType.Value(_V0_TYPES[t])
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(t) or targets.get("*")
        if target is None:
            log.error("Unknown parameter %s for layer type %s (layer '%s'); dropped", field, t, v0.name)
            continue
        sub, name, repeated = target
        value = getattr(v0, field)
        msg = getattr(v1, sub)
        if name is None:
            msg.CopyFrom(value)
        elif repeated:
            getattr(msg, name).append(value)
        elif hasattr(value, "CopyFrom"):
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)


def _upgrade_v1_layer(v1: pb.V1LayerParameter, layer: pb.LayerParameter, path: str) -> None:
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[pb.V1LayerParameter.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)

    def spec(i: int) -> pb.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode  # STRICT/PERMISSIVE have the same numbers in both enums
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, wd in enumerate(v1.weight_decay):
        spec(i).decay_mult = wd
    layer.loss_weight.extend(v1.loss_weight)
    # Every *_param (and transform/loss param) keeps its name and message type in LayerParameter.
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param") and fd.name in pb.LayerParameter.DESCRIPTOR.fields_by_name:
            getattr(layer, fd.name).CopyFrom(value)
    if v1.HasField("layer"):
        log.error("Input NetParameter of layer '%s' has a V0 layer left after upgrade (%s)",
                  v1.name, path)


def _upgrade_input(net: pb.NetParameter, path: str) -> None:
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        if has_shape and len(net.input_shape) != len(net.input):
            raise NetDefinitionError(f"{path}: {len(net.input)} inputs but {len(net.input_shape)} "
                                     "input_shape entries")
        if has_dim and not has_shape and len(net.input_dim) != 4 * len(net.input):
            raise NetDefinitionError(f"{path}: {len(net.input)} inputs need {4 * len(net.input)} "
                                     f"input_dim values, found {len(net.input_dim)}")
        layer = pb.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        rest = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        net.layer.extend(rest)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _needs_batchnorm_upgrade(net: pb.NetParameter) -> bool:
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam", "LARSSGD": "LarsSGD"}


def upgrade_solver(solver: pb.SolverParameter, path: str = "<solver>") -> pb.SolverParameter:
    """Turn a legacy `solver_type` enum into the `type` string (in place; returns it)."""
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise NetDefinitionError(f"{path}: both `solver_type` ({pb.SolverParameter.SolverType.Name(solver.solver_type)}) "
                                     f"and `type` (\"{solver.type}\") are set; keep only `type`")
        log.info("Attempting to upgrade input file specified using deprecated 'solver_type' "
                 "field (enum)': %s", path)
        solver.type = _SOLVER_TYPES[pb.SolverParameter.SolverType.Name(solver.solver_type)]
        solver.ClearField("solver_type")
    return solver


def main(argv: Sequence[str] | None = None) -> int:
    """`netcompress upgrade`: Caffe's upgrade_net_proto_text/binary and upgrade_solver_proto_text."""
    p = argparse.ArgumentParser(
        prog="netcompress upgrade",
        description="Upgrade a legacy net (V0/V1 layers, input fields, old BatchNorm) or solver "
                    "(solver_type) to the current format, like Caffe's upgrade_net_proto_text/binary "
                    "and upgrade_solver_proto_text.")
    p.add_argument("input", help="legacy prototxt, caffemodel or solver prototxt")
    p.add_argument("output", help="where to write the upgraded file")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--binary", action="store_true", help="input and output are binary caffemodels")
    kind.add_argument("--solver", action="store_true", help="input is a solver prototxt")
    a = p.parse_args(argv)
    from . import io as ncio

    if a.solver:
        ncio.write_text_proto(a.output, ncio.read_solver(a.input))
    elif a.binary:
        ncio.write_caffemodel(a.output, ncio.read_caffemodel(a.input))
    else:
        ncio.write_text_proto(a.output, ncio.read_net(a.input))
    log.info("Wrote upgraded %s to %s", "solver" if a.solver else "NetParameter", a.output)
    return 0
