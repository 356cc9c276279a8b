"""pycaffe's `caffe.draw`: a net's graph through pydot (netcompress.tools.draw, which says what differs)."""
from __future__ import annotations

from ..tools.draw import (BLOB_STYLE, LAYER_STYLE_DEFAULT, NEURON_LAYER_STYLE, draw_net, draw_net_to_file,
                          get_edge_label, get_layer_label, get_layer_lr_mult, get_pydot_graph)

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "get_edge_label", "get_layer_label",
           "get_layer_lr_mult", "LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "BLOB_STYLE"]
