"""pycaffe's `caffe.coord_map`: how the coordinates of two net_spec tops relate, and `crop` (FCN's use).

Each spatial layer maps input coordinates to output coordinates by a scale and a shift along its spatial axes:
a convolution or pooling of stride s, extent k (kernel with dilation) and pad p by (1/s, (p - (k-1)/2)/s), a
deconvolution by (s, (k-1)/2 - p), a Crop by (1, -offset), and the point-wise layers (ReLU, Dropout, ...) by
the identity. `coord_map_from_to(a, b)` walks back from both tops to a common ancestor, composing the maps, and
returns the map from a's coordinates to b's; `crop(a, b)` is the Crop layer that aligns a with b (the offsets
of that map, which must be a whole, non-negative shift at scale 1). The rules are BVLC's python/caffe/coord_map.py
(its fields are read from the layers' net_spec keywords, as there); its failed checks are ValueErrors here.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from .net_spec import Function, Top, layers as L

__all__ = ["PASS_THROUGH_LAYERS", "UndefinedMapException", "AxisMismatchException", "CoordMapError", "conv_params",
           "crop_params", "coord_map", "compose", "inverse", "coord_map_from_to", "crop"]

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]


class UndefinedMapException(Exception):
    """A layer type without a coordinate mapping (the walk stops there)."""


class AxisMismatchException(Exception):
    """Two mappings along different axes cannot be composed."""


class CoordMapError(ValueError, AssertionError):
    """A check pycaffe's coord_map makes with `assert` (a crop's scale and offsets, the legacy _h/_w
    parameters): a ValueError that `except AssertionError` catches too, as scripts written for Caffe's do."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, extent, pad) of a Convolution, Deconvolution, Im2col or Pooling layer's keywords."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    if legacy:
        raise CoordMapError(f"{fn.type_name}: cropping does not support the legacy _h/_w parameters "
                         f"({', '.join(sorted(legacy))})")
    if "kernel_size" not in params:
        raise ValueError(f"{fn.type_name}: kernel_size is needed to map coordinates through the layer")
    ks = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (ks - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop layer's keywords, with Crop's defaults (axis 2)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> tuple:
    """(axis, scale, shift) of a layer: output coordinate i * scale + shift for input coordinate i (axis None:
    the identity on every axis)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the last axis before the cropped ones
    raise UndefinedMapException(fn.type_name)


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """`base_map` then `next_map`: the scales multiply, the further shift is scaled by the first scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"axis {ax1} and axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(mapping: tuple) -> tuple:
    """The backward mapping: de-scaled and un-shifted."""
    ax, a, b = mapping
    return ax, 1 / a, -b / a


def _mappable_bottoms(top: Top) -> tuple:
    """The bottoms a walk goes through: all of a layer's, but only a Crop's first (the cropped one)."""
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _walk(start: Top):
    """Breadth-first from `start` towards the data: each top reached, with the mapping from it to `start`."""
    maps = {start: (None, 1, 0)}
    frontier = deque([start])
    while frontier:
        top = frontier.popleft()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            frontier.append(bottom)


def coord_map_from_to(top_from: Top, top_to: Top) -> tuple:
    """The coordinate mapping from `top_from` to `top_to`, through their nearest common ancestor blob."""
    for what, top in (("top_from", top_from), ("top_to", top_to)):
        if not isinstance(top, Top):
            raise TypeError(f"{what} must be a net_spec Top (a layer's output), got {type(top).__name__}")
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top):
    """A Crop layer (net_spec Top) that crops `top_from` to `top_to`'s coordinates: axis and offsets from
    their coordinate mapping."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if ax is None:
        raise CoordMapError("nothing to crop: no spatial layer lies between the two tops (the same blob, or "
                            "element-wise layers only), so their coordinates are the same")
    if not np.all(np.asarray(a) == 1):
        raise CoordMapError(f"scale mismatch on crop (a = {a})")
    if not np.all(np.asarray(b) <= 0):
        raise CoordMapError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise CoordMapError(f"cannot crop noninteger offset (b = {b})")
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1,  # +1: the first cropped axis
                                                    offset=[int(v) for v in -np.round(np.array(b, ndmin=1))]))
