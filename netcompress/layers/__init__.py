"""Caffe layers as nn.Modules, keyed by their exact Caffe type string."""
from .base import (Layer, LayerContext, create_layer, known_layer_types, layer_class,  # noqa: F401
                   register_layer)

__all__ = ["Layer", "LayerContext", "create_layer", "known_layer_types", "layer_class", "register_layer"]
