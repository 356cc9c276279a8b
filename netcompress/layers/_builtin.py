"""Imports every built-in layer module so that each registers its types."""
from . import (arithmetic, common, data, distill, dns, eresnet, inq, loss, masked, neuron,  # noqa: F401
               normalization, python, quant, recurrent, sdn, structure, vision)
