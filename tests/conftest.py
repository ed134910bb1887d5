"""Shared fixtures: an isolated $LORAFLEET_HOME and tiny random models (never a download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def lorafleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty $LORAFLEET_HOME (the slow default-model tests share one)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LORAFLEET_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
