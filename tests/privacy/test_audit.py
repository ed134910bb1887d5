"""The audit chain: intact as written, and a changed, removed or reordered entry is detected."""

from __future__ import annotations

import copy
from typing import Any

from lorafleet.privacy.audit import AuditTrail, FieldCount, verify_report


def report() -> dict[str, Any]:
    trail = AuditTrail()
    for row in range(4):
        trail.append(row, [FieldCount("prompt", "PERSON", "PersonNameRecognizer", row + 1)], [])
    return trail.report(source="notes.jsonl")


def test_an_intact_chain_verifies() -> None:
    whole = report()
    assert verify_report(whole) == []
    assert whole["found"] == {"PERSON": 10}


def test_a_changed_entry_is_detected() -> None:
    changed = copy.deepcopy(report())
    changed["entries"][2]["scrubbed"][0]["count"] = 0  # hide a finding
    assert verify_report(changed) == ["entry 2: its content does not match its hash (changed)"]


def test_a_changed_entry_with_its_hash_recomputed_breaks_the_next_link() -> None:
    from lorafleet.privacy.audit import entry_hash

    changed = copy.deepcopy(report())
    changed["entries"][1]["scrubbed"] = []
    changed["entries"][1]["hash"] = entry_hash(changed["entries"][1])
    assert verify_report(changed) == ["entry 2: its previous hash does not match entry 1's"]


def test_removed_entries_are_detected() -> None:
    middle = copy.deepcopy(report())
    del middle["entries"][1]
    assert verify_report(middle)[0].startswith("entry 1: row 2 where 1 was expected")
    last = copy.deepcopy(report())
    del last["entries"][-1]
    assert "head hash does not match" in verify_report(last)[0]
