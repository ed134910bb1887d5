"""Fixtures for training tests: a tiny llama saved to disk, short data files, and a recipe builder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.training import FinetuneConfig, load_config
from tests.helpers import write_jsonl

# Short rows keep the byte-level tiny tokenizer's sequences near 30 tokens (chat template included).
QA_ROWS = [{"prompt": f"q{i % 4}", "completion": f"answer {i % 4}"} for i in range(16)]
JSON_ROWS = [{"prompt": f"id {i}", "completion": json.dumps({"n": i, "ok": i % 2 == 0})} for i in range(8)]

RecipeFactory = Callable[..., FinetuneConfig]


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    """16 prompt/completion rows: 4 short question/answer pairs, each repeated 4 times."""
    return write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)


@pytest.fixture
def json_file(tmp_path: Path) -> Path:
    """8 prompt/completion rows whose completions are small JSON records (for the json_fields metric)."""
    return write_jsonl(tmp_path / "records.jsonl", JSON_ROWS)


@pytest.fixture
def recipe(tiny_dir: Path, qa_file: Path) -> RecipeFactory:
    """`recipe("training.max_steps=8", ...)`: a quick recipe on the tiny model and `qa_file`, overridden."""

    def make(*overrides: str) -> FinetuneConfig:
        defaults = [
            f"model.name={tiny_dir}",
            f"data.path={qa_file}",
            "data.max_length=64",
            "lora.r=4",
            "lora.target_modules=[q_proj, v_proj]",
            "training.batch_size=4",
            "training.max_steps=4",
            "training.learning_rate=1e-2",
            "training.warmup_ratio=0",
        ]
        return load_config(None, [*defaults, *overrides])

    return make
