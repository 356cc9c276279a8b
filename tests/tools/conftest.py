"""Fixtures for the compression-script tests: small nets and models built in the test.

`models` builds a LeNet-like net (Input, convolution, ReLU, pooling, two inner products) in one of
five flavours — "normal" (Convolution/InnerProduct), "dns", "guo" (CConvolution/CInnerProduct),
"inq" or "masked" (MaskedConvolution/MaskedInnerProduct) — with or without bias, fills it with random weights and random 0/1 masks (or powers of two),
saves it with `net.save` and returns the paths and the arrays written. Layer names carry none of
the reference's "conv"/"ip"/"fc" substrings, so the tests show that layers are chosen by type.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from netcompress.net import Net

TYPES = {
    "normal": ("Convolution", "InnerProduct"),
    "dns": ("DNSConvolution", "DNSInnerProduct"),
    "guo": ("CConvolution", "CInnerProduct"),
    "inq": ("INQConvolution", "INQInnerProduct"),
    "masked": ("MaskedConvolution", "MaskedInnerProduct"),  # plain masks (SNIP, global pruning)
}
PARAM_FIELD = {
    "DNSConvolution": "dns_convolution_param", "DNSInnerProduct": "dns_inner_product_param",
    "CConvolution": "cconvolution_param", "CInnerProduct": "cinner_product_param",
    "INQConvolution": "inq_convolution_param", "INQInnerProduct": "inq_inner_product_param",
    "MaskedConvolution": "dns_convolution_param", "MaskedInnerProduct": "dns_inner_product_param",
}
# (name, kind, num_output); kind "conv" or "ip"
LAYERS = (("feat", "conv", 4), ("hidden", "ip", 40), ("score", "ip", 10))


def _extra(type_name: str) -> str:
    field = PARAM_FIELD.get(type_name)
    if field is None:
        return ""
    if type_name.startswith("INQ"):
        return f"{field} {{ portion: 0.5 portion: 1.0 }}"
    return f"{field} {{ }}"


def net_prototxt(flavour: str = "normal", bias: bool = True, outputs: dict | None = None,
                 plain: tuple[str, ...] = (), extra_layers: str = "") -> str:
    """Prototxt text of the tiny net. `outputs` overrides num_output per layer; layers named in
    `plain` keep the normal types whatever the flavour; `extra_layers` is appended."""
    conv_t, ip_t = TYPES[flavour]
    outputs = outputs or {}
    b = "true" if bias else "false"
    lines = ['name: "tiny"',
             'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 12 dim: 12 } } }']
    bottom = "data"
    for name, kind, n in LAYERS:
        n = outputs.get(name, n)
        if kind == "conv":
            t = "Convolution" if name in plain else conv_t
            lines.append(f'layer {{ name: "{name}" type: "{t}" bottom: "{bottom}" top: "{name}" '
                         f'convolution_param {{ num_output: {n} kernel_size: 3 bias_term: {b} '
                         f'weight_filler {{ type: "xavier" }} }} {_extra(t)} }}')
            lines.append(f'layer {{ name: "pool" type: "Pooling" bottom: "{name}" top: "pool" '
                         'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
            bottom = "pool"
        else:
            t = "InnerProduct" if name in plain else ip_t
            lines.append(f'layer {{ name: "{name}" type: "{t}" bottom: "{bottom}" top: "{name}" '
                         f'inner_product_param {{ num_output: {n} bias_term: {b} '
                         f'weight_filler {{ type: "xavier" }} }} {_extra(t)} }}')
            if name == "hidden":
                lines.append('layer { name: "act" type: "ReLU" bottom: "hidden" top: "hidden" }')
            bottom = name
    lines.append(extra_layers)
    return "\n".join(lines) + "\n"


def pow2_values(rng: np.random.Generator, shape, max_exp: int = -1, zero_p: float = 0.6) -> np.ndarray:
    """Random 0 / ±2^e with e in [max_exp-6, max_exp]; the max exponent always occurs."""
    n = int(np.prod(shape))
    e = rng.integers(max_exp - 6, max_exp + 1, size=n)
    v = np.ldexp(rng.choice([-1.0, 1.0], size=n), e).astype(np.float32)
    v[rng.random(n) < zero_p] = 0
    v[rng.integers(n)] = np.float32(2.0 ** max_exp) * rng.choice([-1, 1])
    return v.reshape(shape)


@dataclasses.dataclass
class Built:
    prototxt: str
    model: str
    flavour: str
    bias: bool
    blobs: dict  # layer -> {"weight": ..., "bias": ..., "weight_mask": ..., "bias_mask": ...}

    def layer_names(self):
        return [n for n, _, _ in LAYERS]


class ModelFactory:
    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def write_prototxt(self, text: str, name: str | None = None) -> str:
        self.count += 1
        path = self.root / (name or f"net{self.count}.prototxt")
        path.write_text(text)
        return str(path)

    def text(self, *args, **kwargs) -> str:
        """`net_prototxt(...)`'s text."""
        return net_prototxt(*args, **kwargs)

    def proto(self, *args, **kwargs) -> str:
        """Write `net_prototxt(...)` to a new file; returns its path."""
        return self.write_prototxt(net_prototxt(*args, **kwargs))

    def build(self, flavour: str = "dns", bias: bool = True, seed: int = 0, pow2: bool = False,
              mask: str = "random", outputs: dict | None = None, plain: tuple[str, ...] = (),
              name: str | None = None, extra_layers: str = "") -> Built:
        """Build, fill and save a model. `mask`: "random" 0/1, "zeros", "ones" or "odd" (random
        values in {0, 0.5, 1, 2}: only 1 keeps)."""
        proto = self.write_prototxt(net_prototxt(flavour, bias, outputs, plain, extra_layers),
                                    f"{name}.prototxt" if name else None)
        net = Net(proto, phase="test", verbose=False)
        rng = np.random.default_rng(seed)
        blobs = {}
        with torch.no_grad():
            for lname, layer in net.named_layers():
                if not layer.blob_names:
                    continue
                d = {}
                for bn in layer.blob_names:
                    t = getattr(layer, bn)
                    shape = tuple(t.shape)
                    if bn.endswith("_mask"):
                        if mask == "random":
                            a = (rng.random(shape) < 0.3).astype(np.float32)
                        elif mask == "zeros":
                            a = np.zeros(shape, np.float32)
                        elif mask == "ones":
                            a = np.ones(shape, np.float32)
                        else:
                            a = rng.choice(np.array([0, 0.5, 1, 2], np.float32), size=shape)
                    elif pow2:
                        a = pow2_values(rng, shape, max_exp=int(rng.integers(-4, 1)))
                    else:
                        a = rng.standard_normal(shape).astype(np.float32)
                    t.copy_(torch.from_numpy(a))
                    d[bn] = a
                blobs[lname] = d
        model = str(self.root / f"{name or f'model{self.count}'}.caffemodel")
        net.save(model)
        return Built(proto, model, flavour, bias, blobs)


@pytest.fixture
def models(tmp_path) -> ModelFactory:
    return ModelFactory(tmp_path)


def read_blobs(path: str) -> dict:
    """layer name -> list of arrays stored in a .caffemodel."""
    from netcompress import io as ncio

    p = ncio.read_caffemodel(path)
    return {l.name: [ncio.blob_to_array(b) for b in l.blobs] for l in p.layer if len(l.blobs)}


@pytest.fixture
def blobs_of():
    return read_blobs
