"""Imports every built-in layer module so that each registers its types."""
from . import common, loss, neuron, vision  # noqa: F401
