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


@pytest.mark.parametrize("text, shapes, path", [
    # (each ran, every value it computed NaN: Caffe accepts them too, and training then stopped at a NaN loss)
    ('type: "ReLU" relu_param { negative_slope: nan }', [(2, 3)], "relu_param.negative_slope"),
    ('type: "ELU" elu_param { alpha: nan }', [(2, 3)], "elu_param.alpha"),
    ('type: "Power" power_param { power: 2 shift: nan }', [(2, 3)], "power_param.shift"),
    ('type: "BatchNorm" batch_norm_param { eps: nan }', [(2, 3)], "batch_norm_param.eps"),
    ('type: "Eltwise" bottom: "b" eltwise_param { coeff: 1 coeff: nan }', [(2, 3), (2, 3)], "eltwise_param.coeff[1]"),
    ('type: "ReLU" loss_weight: nan', [(2, 3)], "loss_weight[0]"),
    ('type: "InnerProduct" param { lr_mult: 1 } param { decay_mult: nan } inner_product_param { num_output: 2 }',
     [(2, 3)], "param[1].decay_mult"),
    ('type: "KnowledgeDistillationLoss" bottom: "b" kd_param { soft_weight: nan }', [(2, 3), (2, 3)],
     "kd_param.soft_weight"),
])
def test_a_nan_parameter_is_refused(text, shapes, path):
    p = text_format.Parse(f'name: "l" bottom: "a" top: "t" {text}', pb.LayerParameter())
    kind = p.type
    with pytest.raises(NetDefinitionError) as e:
        create_layer(p, shapes, LayerContext())
    assert str(e.value) == (f"layer 'l' (type {kind}): {path} is NaN; a parameter must be a number (a NaN spreads to "
                            "every value it touches)")
    clean = text_format.Parse(f'name: "l" bottom: "a" top: "t" {text.replace("nan", "1")}', pb.LayerParameter())
    create_layer(clean, shapes, LayerContext())  # the same layer with a number builds


def test_nan_weights_in_a_layer_parameter_are_not_parameters():
    """Blobs a (V1) LayerParameter carries are weights: a NaN there is the model's (warned where it loads)."""
    from netcompress.layers.base import nan_field

    p = text_format.Parse('name: "l" type: "ReLU" blobs { data: nan } relu_param { negative_slope: 0.1 }',
                          pb.LayerParameter())
    assert nan_field(p) is None
