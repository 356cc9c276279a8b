"""Imports every built-in layer module so that each registers its types."""
from . import (arithmetic, common, data, dns, inq, loss, masked, neuron, normalization, quant,  # noqa: F401
               sdn, structure, vision)
