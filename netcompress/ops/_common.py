"""What every op family module shares: the loaded extension's op namespace and scalar arguments."""
from __future__ import annotations

import torch

from .. import _C  # loads the extension: registers torch.ops.netcompress.*

ops = torch.ops.netcompress

# The ops with a lean C++ entry (csrc/lean_entries.cpp): the same dispatcher call as torch.ops.netcompress.<op>
# without its boxed argument parsing, which costs as much as these single-pass ops on small tensors. Their
# wrappers call torch.ops instead while torch.compile traces them (Dynamo cannot see into the entry).
lean = _C
is_compiling = torch.compiler.is_compiling


def scalar_tensor(x: float | torch.Tensor) -> torch.Tensor:
    """A threshold argument as a tensor: a CPU float64 scalar is read on the host by both backends,
    with no device sync."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
