"""The layer registry: every Caffe type this package implements, and its errors."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from netcompress.errors import NetDefinitionError
from netcompress.layers import LayerContext, create_layer, known_layer_types, layer_class, register_layer
from netcompress.layers.base import Layer
from netcompress.proto import caffe_pb2 as pb

CAFFE_TYPES = [
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "Bias", "Concat", "ContrastiveLoss", "Convolution",
    "Crop", "Deconvolution", "Dropout", "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp",
    "Flatten", "HingeLoss", "InfogainLoss", "InnerProduct", "Input", "LRN", "Log", "MVN",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "ReLU", "Reduction", "Reshape",
    "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax", "SoftmaxWithLoss",
    "Split", "TanH", "Threshold", "Tile",
    # and the rest of BVLC Caffe's layer types (README, "Caffe's layer types")
    "BatchReindex", "Clip", "Filter", "HDF5Output", "Im2col", "LSTM", "LSTMUnit", "Python", "RNN", "SPP", "Swish",
    "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData",
]


def test_every_type_is_registered_under_its_caffe_name():
    known = set(known_layer_types())
    assert set(CAFFE_TYPES) <= known
    for t in CAFFE_TYPES:
        assert layer_class(t).type_name == t
        assert layer_class(t).is_loss == t.endswith("Loss")


def test_unknown_and_duplicate_types():
    p = text_format.Parse('name: "x" type: "Sigmoidd" bottom: "a" top: "b"', pb.LayerParameter())
    with pytest.raises(NetDefinitionError,
                       match=r"Unknown layer type: 'Sigmoidd'; did you mean Sigmoid\? \(known types: .*Sigmoid"):
        create_layer(p, [(2,)], LayerContext())
    for typo, meant in (("relu", "ReLU"), ("Softmaxwithloss", "SoftmaxWithLoss"), ("InnerProdcut", "InnerProduct")):
        p.type = typo
        with pytest.raises(NetDefinitionError, match=rf"Unknown layer type: '{typo}'; did you mean {meant}\? "):
            create_layer(p, [(2,)], LayerContext())
    p.type = "Zzzz"  # nothing near: no guess
    with pytest.raises(NetDefinitionError, match=r"Unknown layer type: 'Zzzz' \(known types: "):
        create_layer(p, [(2,)], LayerContext())
    with pytest.raises(NetDefinitionError, match="'ReLU' is registered twice"):
        register_layer("ReLU")(type("AnotherReLU", (Layer,), {}))


def test_every_bvlc_layer_type_runs():
    """Every type BVLC Caffe registers (tools/bvlc_check.py's list, from its REGISTER_LAYER_* lines) is a
    netcompress layer."""
    from netcompress.tools.bvlc_check import BVLC_LAYER_TYPES

    assert BVLC_LAYER_TYPES <= set(known_layer_types())


@pytest.mark.parametrize("text, shapes, message", [
    ('name: "loss" type: "SoftmaxWithLoss"', [(2, 3)],
     "layer 'loss' (type SoftmaxWithLoss) takes 2 bottom blob(s), got 1"),
    ('name: "r" type: "ReLU"', [(2, 3), (2, 3)], "layer 'r' (type ReLU) takes 1 bottom blob(s), got 2"),
    ('name: "c" type: "Concat"', [], "layer 'c' (type Concat) takes at least 1 bottom blob(s), got 0"),
])
def test_create_layer_checks_the_bottom_count(text, shapes, message):
    # A layer made outside a Net (a tool's own walk over a prototxt, micronet_score's) gets the Net's check
    # (SoftmaxWithLoss with one bottom raised IndexError)
    with pytest.raises(NetDefinitionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_layer(text_format.Parse(text, pb.LayerParameter()), shapes, LayerContext())
