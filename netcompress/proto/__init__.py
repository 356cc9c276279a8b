"""Caffe protobuf bindings (see proto/caffe.proto and tools/gen_proto.py)."""
from . import caffe_pb2

__all__ = ["caffe_pb2", "is_repeated"]


def is_repeated(field) -> bool:
    """Whether a FieldDescriptor is repeated, on every protobuf runtime from 3.20 (`is_repeated` came with the
    newer ones; protobuf 7 has no `label`)."""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED
