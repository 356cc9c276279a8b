"""Imports every built-in layer module so that each registers its types."""
from . import (arithmetic, common, data, distill, dns, inq, loss, masked, neuron, normalization,  # noqa: F401
               quant, sdn, structure, vision)
