"""Imports every built-in layer module so that each registers its types."""
from . import arithmetic, common, compression, distill, loss, neuron, normalization, structure, vision  # noqa: F401
from ..data import layers as _data_layers  # noqa: F401  (Data, ImageData, HDF5Data, MemoryData)
