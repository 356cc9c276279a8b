"""Inputs in the layouts the ops must accept (imported by the op tests)."""
from __future__ import annotations

import torch


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor holding t's values: every other column of a buffer twice as wide."""
    if t.dim() == 0:
        return t
    buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    buf[..., ::2] = t
    return buf[..., ::2]


def random_mask(shape, p_one: float = 0.7, *, dtype=torch.float32, generator=None) -> torch.Tensor:
    """A 0/1 mask with about p_one ones."""
    return (torch.rand(shape, generator=generator) < p_one).to(dtype)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor holding t's values whose data starts one element into its storage, so that it is
    not 16-byte aligned: the CUDA kernels then take their scalar path instead of 16-byte packs."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out
