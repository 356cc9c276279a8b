"""The committed caffe_pb2.py matches proto/caffe.proto, and the schema keeps Caffe's numbers."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from netcompress.proto import caffe_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "tools" / "gen_proto.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bindings_are_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the `test` extra) compiles the schema")
    gen = _gen_proto()
    expected = gen.render(gen.compile_descriptor())
    committed = (REPO / "netcompress" / "proto" / "caffe_pb2.py").read_text()
    assert committed == expected, "caffe_pb2.py is stale: run `python tools/gen_proto.py`"


@pytest.mark.parametrize("message,field,number", [
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2), ("NetParameter", "input_dim", 4),
    ("LayerParameter", "convolution_param", 106), ("LayerParameter", "blobs", 7),
    ("LayerParameter", "dns_convolution_param", 147), ("LayerParameter", "dns_inner_product_param", 148),
    ("LayerParameter", "inq_convolution_param", 149), ("LayerParameter", "inq_inner_product_param", 150),
    ("LayerParameter", "cconvolution_param", 151), ("LayerParameter", "cinner_product_param", 152),
    ("SolverParameter", "layer_wise_reduce", 41), ("SolverParameter", "rampup_interval", 42),
    ("SolverParameter", "rampup_lr", 43), ("SolverParameter", "min_lr", 44),
    ("SolverParameter", "local_gw_ratio", 45), ("BlobProto", "shape", 7), ("BlobProto", "data", 5),
    ("CConvolutionParameter", "iter_stop", 3), ("CConvolutionParameter", "c_rate", 4),
    ("CInnerProductParameter", "c_rate", 3), ("CInnerProductParameter", "iter_stop", 4),
    ("DNSConvolutionParameter", "alpha_low", 7), ("INQConvolutionParameter", "num_quantum_values", 4),
    ("V1LayerParameter", "layer", 1), ("SolverState", "history", 3),
    # recipes-spec 5.2-5.4: LayerParameter from 153, SolverParameter from 46, TransformationParameter from 8
    ("LayerParameter", "kd_param", 153), ("LayerParameter", "mixed_pooling_param", 154),
    ("LayerParameter", "sdn_loss_param", 155), ("LayerParameter", "strict_identity_param", 156),
    ("LayerParameter", "channel_pad_param", 157), ("LayerParameter", "act_quant_param", 158),
    ("LayerParameter", "weight_quant_param", 159), ("LayerParameter", "int_quant_param", 160),
    ("SolverParameter", "epoch_iters", 46), ("SolverParameter", "momentum_form", 47),
    ("SolverParameter", "adaptive_lr", 48), ("SolverParameter", "stepgamma", 49),
    ("SolverParameter", "growth", 50), ("SolverParameter", "snip_schedule", 51),
    ("SolverParameter", "global_prune", 52), ("SolverParameter", "freeze_zero_params", 53),
    ("TransformationParameter", "std_value", 8), ("TransformationParameter", "autoaugment", 9),
    ("TransformationParameter", "pad_crop", 10), ("TransformationParameter", "cutout_size", 11),
])
def test_field_numbers(message, field, number):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number


def test_fork_defaults():
    assert pb.DNSConvolutionParameter().iter_stop == 10000000
    assert pb.DNSInnerProductParameter().iter_stop == 1000000
    assert pb.CConvolutionParameter().c_rate == 3
    assert pb.CInnerProductParameter().c_rate == 1
    assert pb.INQConvolutionParameter().num_quantum_values == 8
    assert abs(pb.SolverParameter().local_gw_ratio - 0.001) < 1e-9
    assert pb.SolverParameter.SolverType.Value("LARSSGD") == 6
    # BVLC's FillerParameter default is constant 0: an omitted mask filler gives all-zero masks.
    assert pb.FillerParameter().type == "constant" and pb.FillerParameter().value == 0


def test_wire_compat_of_packed_blob():
    # A BlobProto as Caffe writes it: shape {dim: 2 dim: 3} and packed float data.
    b = pb.BlobProto()
    b.shape.dim.extend([2, 3])
    b.data.extend([1, 2, 3, 4, 5, 6])
    raw = b.SerializeToString(deterministic=True)
    # field 5 (data), wire type 2 (packed) = 0x2a; 6 floats = 24 bytes
    assert b"\x2a\x18" in raw
    assert raw.startswith(b"\x2a") or raw.startswith(b"\x3a")


def test_repeated_fields_are_told_on_every_supported_protobuf_runtime():
    """pyproject promises protobuf >= 3.20: its FieldDescriptor has `label` and no `is_repeated`, protobuf 7's the
    reverse (asking a descriptor for `is_repeated` failed every net on 3.20). Code asks `netcompress.proto`."""
    import re

    from netcompress.proto import is_repeated

    class Old:  # (a 3.20 descriptor)
        LABEL_OPTIONAL, LABEL_REPEATED = 1, 3

        def __init__(self, label):
            self.label = label

    assert is_repeated(Old(3)) and not is_repeated(Old(1))
    fields = pb.NetParameter.DESCRIPTOR.fields_by_name
    assert is_repeated(fields["layer"]) and not is_repeated(fields["name"])
    root = Path(__file__).resolve().parents[1]
    direct = [f"{p.relative_to(root)}:{n}" for folder in ("netcompress", "tests", "tools", "benchmarks")
              for p in sorted((root / folder).rglob("*.py")) if p.name != "__init__.py" or p.parent.name != "proto"
              for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"\.is_repeated\b|\.label == \w+\.LABEL_REPEATED", line) and "re.search" not in line]
    assert not direct, direct
