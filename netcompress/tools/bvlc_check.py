"""Does a (prototxt, caffemodel) pair load in stock BVLC Caffe?

`check_bvlc_net` checks what netcompress can check without a Caffe build: every layer type is one
BVLC Caffe registers (`BVLC_LAYER_TYPES`, the one list of them), and every blob the caffemodel stores
for a layer of the net has the count and shape that the net builds for it (Caffe's
`CopyTrainedLayersFrom` refuses a mismatch). Scripts that promise a "caffe-compatible" output
(`compress_epsilon_resnet --caffe-compatible`) run it on what they wrote.
"""
from __future__ import annotations

import dataclasses

from .. import io as ncio
from ..proto import caffe_pb2 as pb
from ._common import ToolError, fmt_shape

__all__ = ["BVLC_LAYER_TYPES", "BvlcCheck", "check_bvlc_net", "non_bvlc_layers"]

# The layer types BVLC Caffe's master branch registers (REGISTER_LAYER_CLASS / REGISTER_LAYER_CREATOR
# in src/caffe/layers and layer_factory.cpp). "Python" is left out: it needs a WITH_PYTHON_LAYER build
# and the user's module, so a net that uses it is not loadable by stock Caffe as such.
BVLC_LAYER_TYPES = frozenset({
    "AbsVal", "Accuracy", "ArgMax", "BatchNorm", "BatchReindex", "Bias", "BNLL", "Clip", "Concat",
    "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "Eltwise",
    "ELU", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss",
    "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "Input", "Log", "LRN", "LSTM", "LSTMUnit",
    "MemoryData", "MultinomialLogisticLoss", "MVN", "Parameter", "Pooling", "Power", "PReLU",
    "Reduction", "ReLU", "Reshape", "RNN", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence",
    "Slice", "Softmax", "SoftmaxWithLoss", "Split", "SPP", "Swish", "TanH", "Threshold", "Tile",
    "WindowData",
})


@dataclasses.dataclass
class BvlcCheck:
    """What `check_bvlc_net` looked at (it raises on any problem)."""

    layers: int                 # layers of the prototxt (all phases)
    checked_blobs: int          # blobs compared against the built net
    ignored_model_layers: list[str]  # caffemodel layers the net does not have (Caffe ignores them)


def non_bvlc_layers(param: pb.NetParameter) -> list[tuple[str, str]]:
    """(name, type) of every layer whose type BVLC Caffe does not know."""
    return [(l.name, l.type) for l in param.layer if l.type not in BVLC_LAYER_TYPES]


def check_bvlc_net(prototxt: str, caffemodel: str, phase: int = pb.TEST) -> BvlcCheck:
    """Raise ToolError (naming the files, layers, types and shapes) unless every layer type of
    `prototxt` and of `caffemodel` is a BVLC type and the model's blobs fit the net built in `phase`."""
    from ..net import Net  # the net builder is the shape oracle

    param = ncio.read_net(prototxt)
    model = ncio.read_caffemodel(caffemodel)
    problems = [f"{prototxt}: layer '{n}' has type '{t}', which BVLC Caffe does not have"
                for n, t in non_bvlc_layers(param)]
    problems += [f"{caffemodel}: layer '{l.name}' has type '{l.type}', which BVLC Caffe does not have"
                 for l in model.layer if l.type and l.type not in BVLC_LAYER_TYPES]
    if problems:
        raise ToolError("not a BVLC Caffe net:\n  " + "\n  ".join(problems))
    net = Net(param, phase=phase, verbose=False, source=prototxt)
    stored = {l.name: l for l in model.layer}
    checked = 0
    for name, layer in net.named_layers():
        built = [tuple(int(d) for d in b.shape) for b in layer.blobs()]
        if not built:
            continue
        src = stored.get(name)
        if src is None or not len(src.blobs):
            problems.append(f"{caffemodel} stores no blobs for layer '{name}' ({layer.type_name}), which "
                            f"has {len(built)}: Caffe would keep its filler values")
            continue
        if len(src.blobs) != len(built):
            problems.append(f"layer '{name}' ({layer.type_name}): {caffemodel} stores {len(src.blobs)} "
                            f"blobs, the net has {len(built)}")
            continue
        for j, (b, want) in enumerate(zip(src.blobs, built)):
            got = tuple(ncio.blob_shape(b))
            checked += 1
            if got != want:
                problems.append(f"layer '{name}' ({layer.type_name}) blob {j}: {caffemodel} has shape "
                                f"{fmt_shape(got)}, the net builds {fmt_shape(want)}")
    if problems:
        raise ToolError(f"{caffemodel} does not fit {prototxt}:\n  " + "\n  ".join(problems))
    ignored = [l.name for l in model.layer if not net.has_layer(l.name)]
    return BvlcCheck(layers=len(param.layer), checked_blobs=checked, ignored_model_layers=ignored)
