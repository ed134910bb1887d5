"""`lorafleet data example DIR --federated N`: a seeded non-IID split of the support tickets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lorafleet.data.federated_split import write_federated_split
from lorafleet.data.support_tickets import TICKET_TYPES
from lorafleet.errors import ConfigError
from tests.helpers import assert_friendly_error, invoke

# How each of the four ticket date styles writes 2025-03-05, and a pattern matching only that style.
STYLE_PATTERNS = {
    "2025-03-05": r"\b\d{4}-\d{2}-\d{2}\b",
    "March 5, 2025": r"\b[A-Z][a-z]+ \d{1,2}, \d{4}\b",
    "5 March 2025": r"\b\d{1,2} [A-Z][a-z]+ \d{4}\b",
    "Mar 5 2025": r"\b[A-Z][a-z]{2} \d{1,2} \d{4}\b",
}


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(json.loads(line)["completion"]) for line in path.read_text().splitlines()]


def _prompts(path: Path) -> set[str]:
    return {json.loads(line)["prompt"] for line in path.read_text().splitlines()}


def test_each_client_sees_a_few_types_and_its_own_date_style(tmp_path: Path) -> None:
    paths = write_federated_split(tmp_path, clients=10, train_rows=300, test_rows=60, seed=0)
    described = json.loads((tmp_path / "clients.json").read_text())
    assert [p.relative_to(tmp_path).as_posix() for p in paths][:2] == [
        "client-00/train.jsonl",
        "client-01/train.jsonl",
    ]
    seen_types: set[object] = set()
    for path, client in zip(paths, described, strict=True):
        records = _records(path)
        assert len(records) == client["rows"] == 30
        types = {record["type"] for record in records}
        assert types <= set(client["types"]) and len(client["types"]) == 2
        seen_types |= types
        date = re.compile(STYLE_PATTERNS[client["date_style"]])
        assert all(date.search(prompt) for prompt in _prompts(path)), client
    assert seen_types == set(TICKET_TYPES)  # the union covers the task
    assert len({c["date_style"] for c in described}) == 4  # every style of the task, split among clients
    test_types = {record["type"] for record in _records(tmp_path / "test.jsonl")}
    assert test_types == set(TICKET_TYPES)


def test_same_seed_same_files_and_no_prompt_repeats(tmp_path: Path) -> None:
    first = write_federated_split(tmp_path / "a", clients=3, train_rows=30, test_rows=10, seed=5)
    again = write_federated_split(tmp_path / "b", clients=3, train_rows=30, test_rows=10, seed=5)
    other = write_federated_split(tmp_path / "c", clients=3, train_rows=30, test_rows=10, seed=6)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]
    prompts = [_prompts(p) for p in [*first, tmp_path / "a" / "test.jsonl"]]
    assert sum(len(p) for p in prompts) == len(set().union(*prompts)) == 40


def test_bad_client_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--federated 0"):
        write_federated_split(tmp_path, clients=0)
    with pytest.raises(ConfigError, match="--train-rows 3"):
        write_federated_split(tmp_path, clients=4, train_rows=3)


def test_the_cli_writes_the_split(tmp_path: Path) -> None:
    result = invoke(
        "data", "example", str(tmp_path), "--federated", "4", "--train-rows", "40", "--test-rows", "8"
    )
    assert result.exit_code == 0, result.output
    assert "wrote 4 clients' rows" in result.output
    assert (tmp_path / "client-03" / "train.jsonl").is_file() and (tmp_path / "test.jsonl").is_file()
    assert_friendly_error(
        invoke("data", "example", str(tmp_path), "--federated", "2", "--task", "invoices"), "support_tickets"
    )
