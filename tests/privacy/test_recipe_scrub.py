"""`data.scrub: true`: a local run reads a scrubbed copy of its rows; the field is validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.data import DataConfig, prepare_data
from lorafleet.errors import ConfigError
from lorafleet.models import tiny_tokenizer
from lorafleet.training import load_config
from tests.helpers import write_jsonl

NOTE = "Patient Ingmar Solveigsdottir (MRN: 88120044), call 617-555-0134."


def test_a_scrubbing_recipe_trains_on_scrubbed_rows(tmp_path: Path) -> None:
    rows = [{"prompt": NOTE, "completion": json.dumps({"patient": "Ingmar Solveigsdottir"})}] * 4
    source = write_jsonl(tmp_path / "notes.jsonl", rows)
    prepared = prepare_data(
        DataConfig.parse(path=str(source), scrub=True, validation_fraction=0, max_length=256),
        tiny_tokenizer(),
    )
    (note,) = [n for n in prepared.notes if n.startswith("scrubbed")]
    scrubbed = Path(note.split(" → ")[1].split(" (")[0])
    assert scrubbed.is_file() and scrubbed != source
    text = scrubbed.read_text()
    assert "Solveigsdottir" not in text and "88120044" not in text and "617-555-0134" not in text
    assert scrubbed.with_name("notes.scrub.json").is_file()


def test_scrub_needs_jsonl() -> None:
    with pytest.raises(ConfigError, match=r"data: .*scrub reads .jsonl files; rows.csv is not one"):
        DataConfig.parse(path="rows.csv", scrub=True)


def test_the_healthcare_recipe_scrubs_by_default() -> None:
    assert load_config(Path("configs/healthcare.yaml"), []).data.scrub is True
