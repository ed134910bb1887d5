"""Fixtures for adapter tests (`tiny_base` and `make_adapter` live in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(1))
