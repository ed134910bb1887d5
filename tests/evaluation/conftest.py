"""Fixtures for evaluation tests: the tiny llama loaded from disk, and suite files written beside the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import nn

from lorafleet.models import load_base


@pytest.fixture
def tiny(tiny_dir: Path) -> tuple[nn.Module, Any]:
    """The tiny random llama and its byte-level tokenizer, on the CPU in fp32."""
    return load_base(str(tiny_dir), device="cpu")
