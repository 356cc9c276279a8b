"""netcompress's sidecar snapshot state: what Caffe's SolverState cannot hold.

Caffe's `.solverstate` keeps the iteration, the learning-rate step and the history blobs; a
run also depends on data positions, random generators, layer state (each layer's
`state_dict` extras, e.g. masks' statistics) and training callbacks' state. That goes into `<prefix>_iter_N.solverstate.nc.npz`: numpy arrays plus a JSON tree
(no pickle), so Caffe still reads the `.solverstate` and a resumed run continues bit-identically.
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from ..io import atomic_write

__all__ = ["encode_tree", "decode_tree", "save_state", "load_state", "SIDECAR_SUFFIX"]

SIDECAR_SUFFIX = ".nc.npz"


def encode_tree(obj: Any, arrays: dict[str, np.ndarray], path: str = "r") -> Any:
    """JSON-able description of `obj`; tensors and arrays go to `arrays` by key."""
    if isinstance(obj, torch.Tensor):
        key = f"a{len(arrays)}"
        t = obj.detach().cpu()
        dtype = str(t.dtype).replace("torch.", "")
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        arrays[key] = t.numpy().copy()
        return {"__tensor__": key, "dtype": dtype}
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key}
    if isinstance(obj, (bytes, bytearray)):
        key = f"a{len(arrays)}"
        arrays[key] = np.frombuffer(bytes(obj), dtype=np.uint8).copy()
        return {"__bytes__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"snapshot state at {path}: dict keys must be strings")
        return {"__dict__": {k: encode_tree(v, arrays, f"{path}.{k}") for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [encode_tree(v, arrays, f"{path}[{i}]") for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        if isinstance(obj, float) and not np.isfinite(obj):
            return {"__float__": repr(obj)}
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return encode_tree(obj.item(), arrays, path)
    raise TypeError(f"snapshot state at {path}: cannot store a {type(obj).__name__}")


def decode_tree(node: Any, arrays) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            a = np.asarray(arrays[node["__tensor__"]])
            dtype = node["dtype"]
            t = torch.from_numpy(a.copy())
            if dtype == "bfloat16":
                t = t.view(torch.bfloat16)
            return t.to(getattr(torch, dtype))
        if "__array__" in node:
            return np.asarray(arrays[node["__array__"]]).copy()
        if "__bytes__" in node:
            return np.asarray(arrays[node["__bytes__"]]).tobytes()
        if "__dict__" in node:
            return {k: decode_tree(v, arrays) for k, v in node["__dict__"].items()}
        if "__list__" in node:
            items = [decode_tree(v, arrays) for v in node["__list__"]]
            return tuple(items) if node.get("tuple") else items
        if "__float__" in node:
            return float(node["__float__"])
    return node


def save_state(path: str, tree: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = encode_tree(tree, arrays)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    atomic_write(path, buf.getvalue())


def load_state(path: str) -> dict:
    from ..io import check_input_file

    check_input_file(path, "netcompress solver state")
    # (our own file object: numpy's np.load of a path leaves the file open when the zip inside is damaged)
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes().decode())
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
    return decode_tree(meta, arrays)
