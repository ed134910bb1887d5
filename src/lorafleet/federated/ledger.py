"""The run's ledger: one JSON line per round, written as the round ends, so a stopped run keeps its record.

Each entry holds the round, the clients sampled, accepted and refused (with the reason), the bytes of
LoRA tensors sent each way (under SecAgg+: of every protocol message, masked updates and keys), the ε
spent so far (null without privacy), the validation loss after the round (null without validation
rows), whether the update was applied, and the round's wall time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

LEDGER_FILE = "ledger.jsonl"


@dataclass(frozen=True)
class LedgerEntry:
    """One round of a federated run."""

    round: int
    sampled: list[str]
    accepted: list[str]
    refused: dict[str, str]
    applied: bool
    bytes_down: int  # server → clients: the global LoRA once per sampled client (SecAgg+: every message)
    bytes_up: int  # clients → server: the LoRA of every answer received (SecAgg+: masked updates, keys)
    epsilon: float | None
    validation_loss: float | None
    update_norm: float | None
    wall_seconds: float
    note: str | None = None


class Ledger:
    """Appends `LedgerEntry` lines to `path` (a new run truncates it) and keeps them in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[LedgerEntry] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        with self.path.open("a") as file:
            file.write(json.dumps(asdict(entry)) + "\n")

    def bytes_total(self) -> int:
        """Bytes of LoRA tensors sent both ways over the whole run."""
        return sum(entry.bytes_down + entry.bytes_up for entry in self.entries)
