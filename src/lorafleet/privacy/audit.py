"""The audit trail of one scrubbed dataset: per row, what kinds of PHI were found, how many, by which
recognizer, in which field; a SHA-256 hash chain over the rows; never a raw value.

Each entry's `hash` is SHA-256 of the previous entry's hash and the entry's own canonical JSON (its
`hash` left out); the report's `head` is the last hash. Changing, removing, adding or reordering an
entry breaks the chain from that entry on, so `verify_report` names the first entry at fault. The
report also carries the SHA-256 of the scrubbed file it describes.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

REPORT_KIND = "lorafleet.scrub_audit"
GENESIS = "0" * 64


@dataclass(frozen=True)
class FieldCount:
    """How many spans of one kind one recognizer found in one field of a row."""

    field: str
    entity_type: str
    recognizer: str
    count: int


@dataclass
class AuditTrail:
    """Entries appended row by row, chained as they come."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    head: str = GENESIS

    def append(self, row: int, scrubbed: list[FieldCount], unscrubbed: list[FieldCount]) -> None:
        """Add row `row`'s counts: `scrubbed` were replaced; `unscrubbed` were found in fields told to be
        skipped and left as they were (reported, never silently passed)."""
        entry: dict[str, Any] = {
            "row": row,
            "scrubbed": [vars(c) for c in scrubbed],
            "unscrubbed": [vars(c) for c in unscrubbed],
            "previous": self.head,
        }
        entry["hash"] = entry_hash(entry)
        self.entries.append(entry)
        self.head = entry["hash"]

    def report(self, **about: Any) -> dict[str, Any]:
        """The whole report: totals by kind and by recognizer, unscrubbed findings, entries, head."""
        totals: Counter[str] = Counter()
        recognizers: Counter[str] = Counter()
        unscrubbed: Counter[str] = Counter()
        for entry in self.entries:
            for item in entry["scrubbed"]:
                totals[item["entity_type"]] += item["count"]
                recognizers[item["recognizer"]] += item["count"]
            for item in entry["unscrubbed"]:
                unscrubbed[f"{item['field']}:{item['entity_type']}"] += item["count"]
        return {
            "kind": REPORT_KIND,
            "version": 1,
            **about,
            "rows": len(self.entries),
            "found": dict(sorted(totals.items())),
            "by_recognizer": dict(sorted(recognizers.items())),
            "unscrubbed": dict(sorted(unscrubbed.items())),
            "head": self.head,
            "entries": self.entries,
        }


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its per-row entries: what a file's record, a version's metrics and a model card
    show (the entries stay in the whole report, which `verify_report` checks)."""
    return {key: value for key, value in report.items() if key != "entries"}


def scrub_record(report: dict[str, Any], **about: Any) -> dict[str, Any]:
    """What an adapter version trained on scrubbed rows keeps of their report (its metrics' `data_scrub`):
    `about` (which file), rows, kinds found, findings left in skipped fields, and the chain's head, which
    ties the version to the one whole report."""
    kept = ("rows", "found", "unscrubbed", "head")
    return {**about, **{key: report[key] for key in kept if key in report}}


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 over the previous hash and the entry's canonical JSON, its own `hash` left out."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{entry.get('previous', '')}\n{canonical}".encode()).hexdigest()


def verify_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report's chain, first one first; an empty list means it is intact."""
    if report.get("kind") != REPORT_KIND:
        return [f"not a scrub audit report (kind {report.get('kind')!r})"]
    previous = GENESIS
    entries = report.get("entries", [])
    for position, entry in enumerate(entries):
        if entry.get("row") != position:
            return [
                f"entry {position}: row {entry.get('row')!r} where {position} was expected (removed or moved)"
            ]
        if entry.get("previous") != previous:
            return [f"entry {position}: its previous hash does not match entry {position - 1}'s"]
        if entry.get("hash") != entry_hash(entry):
            return [f"entry {position}: its content does not match its hash (changed)"]
        previous = entry["hash"]
    problems = []
    if report.get("head") != previous:
        problems.append("the head hash does not match the last entry (entries removed or added at the end)")
    if report.get("rows") != len(entries):
        problems.append(f"rows says {report.get('rows')} but there are {len(entries)} entries")
    return problems
