"""Fixtures for federated runs: a non-IID split of the tickets and a recipe on the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.training import FinetuneConfig, load_config


@pytest.fixture
def split(tmp_path: Path) -> Path:
    """Three clients' ticket rows (8 each) and a common test.jsonl, written by the data split."""
    from lorafleet.data.federated_split import write_federated_split

    write_federated_split(tmp_path / "fed", clients=3, train_rows=24, test_rows=8, seed=0)
    return tmp_path / "fed"


@pytest.fixture
def fed_recipe(tiny_dir: Path, split: Path, tmp_path: Path) -> Callable[..., FinetuneConfig]:
    """`fed_recipe("federated.rounds=3", ...)`: a quick federated recipe on the tiny model and `split`."""

    def make(*overrides: str) -> FinetuneConfig:
        defaults = [
            f"model.name={tiny_dir}",
            f"data.path={split}/client-{{client:02d}}/train.jsonl",
            f"data.validation_path={split}/test.jsonl",
            "data.max_length=512",
            "lora.r=4",
            "lora.target_modules=[q_proj, v_proj]",
            "training.batch_size=4",
            "training.learning_rate=1e-2",
            "federated.clients=3",
            "federated.rounds=2",
            "federated.fraction=1.0",
            "federated.min_clients=1",
            "federated.local_steps=2",
            "federated.validation_rows=4",
            "output.name=fed",
            f"output.run_dir={tmp_path / 'run'}",
        ]
        return load_config(None, [*defaults, *overrides])

    return make
