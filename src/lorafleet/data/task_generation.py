"""A generated example task, and how its train and held-out test files are written from one seed.

A task is an instruction naming the JSON keys, those keys, and a generator that turns a seeded
`random.Random` into one text and its reference record. Rows are `{"prompt": instruction + text,
"completion": compact JSON}` (the `prompt_completion` format, scored by the `json_fields` metric),
written one per line. Train rows are drawn first, then test rows from the same stream; a prompt
already drawn is drawn again, so the test set is held out and no row repeats.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Generator = Callable[[random.Random], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class ExampleTask:
    """One bundled task: what the model is asked, which keys it answers with, and how rows are made."""

    name: str  # the CLI's `--task` value, e.g. "invoices"
    description: str  # one line for help and docs
    instruction: str  # the prompt's first line; it names the keys
    fields: tuple[str, ...]  # the keys of every completion, in order
    generate: Generator  # rng → (text, record with exactly `fields`)

    def row(self, text: str, record: dict[str, Any]) -> dict[str, str]:
        """A `{"prompt", "completion"}` training row for one generated text and its record."""
        return {
            "prompt": f"{self.instruction}\n\n{text}",
            "completion": json.dumps(record, separators=(",", ":")),
        }

    def rows(self, count: int, rng: random.Random, seen: set[str]) -> list[dict[str, str]]:
        """`count` rows whose prompts are not in `seen` (which they are added to)."""
        rows: list[dict[str, str]] = []
        while len(rows) < count:
            text, record = self.generate(rng)
            if list(record) != list(self.fields):
                raise AssertionError(f"{self.name}: record keys {list(record)} are not {list(self.fields)}")
            row = self.row(text, record)
            if row["prompt"] not in seen:
                seen.add(row["prompt"])
                rows.append(row)
        return rows

    def write(
        self, directory: Path, *, train_rows: int = 1000, test_rows: int = 200, seed: int = 0
    ) -> tuple[Path, Path]:
        """Write `train.jsonl` and `test.jsonl` (held out) into `directory`; same seed, same files."""
        rng = random.Random(seed)
        seen: set[str] = set()
        directory.mkdir(parents=True, exist_ok=True)
        paths = (directory / "train.jsonl", directory / "test.jsonl")
        for path, count in zip(paths, (train_rows, test_rows), strict=True):
            lines = [json.dumps(row) for row in self.rows(count, rng, seen)]
            path.write_text("\n".join(lines) + "\n")
        return paths
