"""Caffe protobuf bindings (see proto/caffe.proto and tools/gen_proto.py)."""
from . import caffe_pb2

__all__ = ["caffe_pb2"]
