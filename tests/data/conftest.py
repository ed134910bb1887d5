"""Helpers that write the same rows as JSONL, CSV, Parquet or a `datasets` directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

ROWS: dict[str, list[dict[str, Any]]] = {
    "text": [{"text": "The sky is blue."}, {"text": "Grass is green."}],
    "prompt_completion": [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}],
    "alpaca": [
        {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ],
    "chat": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]},
    ],
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            cells = [row.get(key, "") for key in columns]
            writer.writerow([json.dumps(c) if isinstance(c, list) else c for c in cells])
    return path


def write_table(path: Path, rows: list[dict[str, Any]], kind: str) -> Path:
    """Rows written by `datasets` as a Parquet file or a save_to_disk directory."""
    import datasets

    table = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        table.to_parquet(str(path))
    else:
        table.save_to_disk(str(path))
    return path


def write_rows(directory: Path, rows: list[dict[str, Any]], kind: str) -> Path:
    """`rows` written as `kind`: jsonl, csv, parquet or dir."""
    if kind == "jsonl":
        return write_jsonl(directory / "rows.jsonl", rows)
    if kind == "csv":
        return write_csv(directory / "rows.csv", rows)
    if kind == "parquet":
        return write_table(directory / "rows.parquet", rows, "parquet")
    return write_table(directory / "rows", rows, "dir")


@pytest.fixture(autouse=True)
def _quiet_progress() -> None:
    import datasets

    datasets.disable_progress_bars()
