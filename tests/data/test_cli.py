"""`lorafleet data stats` and `lorafleet data example` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafleet.cli.data import app
from lorafleet.errors import DataError, ModelLoadError
from lorafleet.models import tiny_model
from tests.data.conftest import ROWS, write_jsonl


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_stats_json(tmp_path: Path, tiny_dir: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [*ROWS["chat"], {"messages": []}])
    result = CliRunner().invoke(
        app, ["stats", str(path), "--model", str(tiny_dir), "--skip-bad-rows", "--max-length", "44", "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["format"] == "chat"
    assert (stats["rows"], stats["skipped"], stats["truncated"], stats["dropped"]) == (2, 1, 1, 0)
    assert stats["length_max"] == 44 and 0 < stats["label_tokens"] < stats["tokens"]


def test_stats_table(tmp_path: Path, tiny_dir: Path) -> None:
    path = write_jsonl(tmp_path / "pc.jsonl", ROWS["prompt_completion"])
    result = CliRunner().invoke(app, ["stats", str(path), "--model", str(tiny_dir)])
    assert result.exit_code == 0, result.output
    for needle in ("prompt_completion", "rows", "label tokens", "length p99"):
        assert needle in result.stdout


def test_stats_errors_are_lorafleet_errors(tmp_path: Path, tiny_dir: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": 1}\n')
    result = CliRunner().invoke(app, ["stats", str(path), "--model", str(tiny_dir)])
    assert isinstance(result.exception, DataError)
    assert f"{path}:2: 'text' must be a string" in str(result.exception)
    result = CliRunner().invoke(app, ["stats", str(path), "--model", str(tmp_path / "missing")])
    assert isinstance(result.exception, ModelLoadError)


def test_example_writes_the_support_tickets(tmp_path: Path) -> None:
    pytest.importorskip("lorafleet.data.support_tickets")
    result = CliRunner().invoke(
        app, ["example", str(tmp_path / "ex"), "--train-rows", "5", "--test-rows", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "ex" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 5 and set(json.loads(lines[0])) == {"prompt", "completion"}
    assert len((tmp_path / "ex" / "test.jsonl").read_text().splitlines()) == 2
