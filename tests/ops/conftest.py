"""Fixtures for the op tests (helper functions are in op_helpers.py)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator, so every op test sees the same random inputs."""
    return torch.Generator().manual_seed(1234)
