"""The bundled support-ticket task: reproducible files, well-formed JSON records that match their tickets,
disjoint train and test rows, and varied wording."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lorafleet.data.support_tickets import FIELDS, INSTRUCTION, TICKET_TYPES, write_example_dataset


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def default_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_example_dataset(tmp_path_factory.mktemp("tickets"))


@pytest.fixture(scope="module")
def train_rows(default_files: tuple[Path, Path]) -> list[dict[str, Any]]:
    return read_rows(default_files[0])


@pytest.fixture(scope="module")
def test_rows(default_files: tuple[Path, Path]) -> list[dict[str, Any]]:
    return read_rows(default_files[1])


def ticket_text(row: dict[str, Any]) -> str:
    return str(row["prompt"]).removeprefix(f"{INSTRUCTION}\n\n")


def test_default_sizes_and_names(
    default_files: tuple[Path, Path], train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]]
) -> None:
    assert [p.name for p in default_files] == ["train.jsonl", "test.jsonl"]
    assert (len(train_rows), len(test_rows)) == (1000, 200)
    assert all(set(row) == {"prompt", "completion"} for row in train_rows + test_rows)


def test_same_seed_same_files_and_another_seed_other_files(tmp_path: Path) -> None:
    first = write_example_dataset(tmp_path / "a", train_rows=50, test_rows=10, seed=3)
    again = write_example_dataset(tmp_path / "b", train_rows=50, test_rows=10, seed=3)
    other = write_example_dataset(tmp_path / "c", train_rows=50, test_rows=10, seed=4)

    for mine, same, different in zip(first, again, other, strict=True):
        assert mine.read_bytes() == same.read_bytes()
        assert mine.read_bytes() != different.read_bytes()


def test_row_counts_are_as_asked(tmp_path: Path) -> None:
    train, test = write_example_dataset(tmp_path / "nested" / "dir", train_rows=7, test_rows=3)

    assert (len(read_rows(train)), len(read_rows(test))) == (7, 3)


def test_every_completion_is_a_record_of_the_five_fields(
    train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]]
) -> None:
    for row in train_rows + test_rows:
        record = json.loads(row["completion"])
        assert list(record) == list(FIELDS)
        assert record["type"] in TICKET_TYPES
        assert isinstance(record["customer"], str) and len(record["customer"].split()) == 2
        assert record["order_id"] is None or re.fullmatch(r"[A-Z]{2}-\d{5}", record["order_id"])
        assert record["amount"] is None or (
            isinstance(record["amount"], float | int) and 0 < record["amount"] < 1000
        )
        assert datetime.date.fromisoformat(record["date"]).isoformat() == record["date"]
        if record["type"] == "account":
            assert record["amount"] is None


def test_every_record_is_stated_in_its_ticket(train_rows: list[dict[str, Any]]) -> None:
    for row in train_rows:
        ticket, record = ticket_text(row), json.loads(row["completion"])
        assert row["prompt"].startswith(f"{INSTRUCTION}\n\n")
        assert record["customer"] in ticket
        if record["order_id"] is not None:
            assert record["order_id"] in ticket
        if record["amount"] is not None:
            assert f"{record['amount']:.2f}" in ticket.replace(",", "")
        year, _, day = record["date"].split("-")
        assert year in ticket and str(int(day)) in ticket


def test_every_type_and_both_nulls_occur(train_rows: list[dict[str, Any]]) -> None:
    records = [json.loads(row["completion"]) for row in train_rows]

    assert {r["type"] for r in records} == set(TICKET_TYPES)
    assert any(r["order_id"] is None for r in records) and any(r["order_id"] for r in records)
    assert any(r["amount"] is None and r["type"] != "account" for r in records)


def test_train_and_test_prompts_are_disjoint(
    train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]]
) -> None:
    train_prompts = {row["prompt"] for row in train_rows}

    assert len(train_prompts) == len(train_rows)
    assert train_prompts.isdisjoint(row["prompt"] for row in test_rows)


def test_wording_varies(train_rows: list[dict[str, Any]]) -> None:
    first_sentences = {re.split(r"(?<=[.,])\s", ticket_text(row))[0] for row in train_rows}
    # With names, numbers and dates masked, tickets still differ in wording and order.
    masked = set()
    for row in train_rows:
        record = json.loads(row["completion"])
        text = ticket_text(row).replace(record["customer"], "<name>")
        masked.add(re.sub(r"\d+", "<n>", text))

    assert len(first_sentences) > 20
    assert len(masked) > 500
