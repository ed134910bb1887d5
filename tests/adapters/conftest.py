"""Fixtures for adapter tests: a tiny base and a saved adapter with non-zero B (so it changes outputs)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from lorafleet.adapters import LoraSettings, attach, save_adapter
from lorafleet.models import tiny_model


@pytest.fixture
def tiny_base() -> PreTrainedModel:
    model, _ = tiny_model("llama", seed=0)
    return model


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(1))


AdapterFactory = Callable[..., Path]


@pytest.fixture
def make_adapter() -> AdapterFactory:
    """`make_adapter(base, path, seed=0, **settings)`: save a random (B ≠ 0) adapter of a copy of `base`."""

    def make(base: PreTrainedModel, path: Path, seed: int = 0, **settings: object) -> Path:
        torch.manual_seed(seed)
        options: dict[str, object] = {
            "r": 4,
            "alpha": 8.0,
            "target_modules": ["q_proj", "v_proj"],
            "init": "random",
        }
        options.update(settings)
        peft_model = attach(copy.deepcopy(base), LoraSettings(**options))  # type: ignore[arg-type]
        return save_adapter(peft_model, path)

    return make
