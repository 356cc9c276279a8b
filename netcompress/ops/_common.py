"""What every op family module shares: the loaded extension's op namespace and scalar arguments."""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (loads the extension: registers torch.ops.netcompress.*)

ops = torch.ops.netcompress


def scalar_tensor(x: float | torch.Tensor) -> torch.Tensor:
    """A threshold argument as a tensor: a CPU float64 scalar is read on the host by both backends,
    with no device sync."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
