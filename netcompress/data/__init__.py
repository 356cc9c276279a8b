"""Caffe's data path: DataTransformer, Datum decoding, LMDB tools, MNIST-5k.

Submodules import their heavy dependencies (lmdb, h5py, Pillow) only when used:
`transformer` (DataTransformer, Datum <-> arrays), `image` (BGR decoding and OpenCV-style
resizing), `db` (LMDB and LevelDB readers/writers), `prefetch` (the background loader),
`tools` (convert_mnist, convert_imageset, compute_image_mean), `mnist5k` (the embedded digits).
The data layers that use them (Data, ImageData, HDF5Data, MemoryData) are in
`netcompress.layers.data`; nothing here imports the layer registry.
"""
from __future__ import annotations

from .db import DataError, LeveldbReader, LeveldbWriter, LmdbReader, LmdbWriter  # noqa: F401
from .transformer import DataTransformer, TransformError, array_to_datum, datum_to_array  # noqa: F401

__all__ = ["DataError", "DataTransformer", "TransformError", "LmdbReader", "LmdbWriter", "LeveldbReader",
           "LeveldbWriter",
           "array_to_datum", "datum_to_array"]
