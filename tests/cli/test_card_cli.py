"""`lorafleet adapters card`: a version trained on a file scrubbed on upload shows the file's scrubbing
report; a registry-level upload that fails stores neither the file nor its report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.privacy.scrub import FieldChoice, report_path, scrub_jsonl
from lorafleet.registry import Registry
from tests.cli.test_platform_cli import ok
from tests.helpers import write_jsonl

NOTE = "Patient Ingmar Solveigsdottir (MRN: 88120044), call 617-555-0134."
ROWS = [{"prompt": NOTE, "completion": json.dumps({"patient": "Ingmar Solveigsdottir"})}] * 3


@pytest.fixture
def registry() -> Iterator[Registry]:
    opened = Registry()
    yield opened
    opened.close()


def scrubbed(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    target = tmp_path / "scrubbed" / "notes.jsonl"
    report = scrub_jsonl(write_jsonl(tmp_path / "notes.jsonl", ROWS), target, choice=FieldChoice())
    return target, report


def test_the_card_shows_the_training_files_scrubbing_report(
    registry: Registry, random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    tenant = registry.tenants.create("acme").id
    target, report = scrubbed(tmp_path)
    dataset = registry.datasets.add(
        tenant, target, filename="notes.jsonl", format="prompt_completion", rows=3, tokens=90,
        scrub_report=report_path(target),
    )  # fmt: skip
    registry.adapters.register(
        tenant, "notes", random_adapter, base_model=str(tiny_dir), dataset_id=dataset.id
    )

    card = ok("adapters", "card", "notes@1", "--tenant", "acme")
    scrubbing = card.split("### Scrubbing of the training file")[1]
    assert f"3 rows scrubbed; audit chain head `{report['head']}`" in scrubbing
    assert "| MEDICAL_RECORD_NUMBER | 3 |" in scrubbing and "| PERSON |" in scrubbing


def test_a_failed_add_stores_neither_the_file_nor_its_report(registry: Registry, tmp_path: Path) -> None:
    tenant = registry.tenants.create("acme").id
    target, _ = scrubbed(tmp_path)
    with pytest.raises(IsADirectoryError):  # the report is stored first, then the file cannot be
        registry.datasets.add(
            tenant, target.parent, filename="notes.jsonl", format="prompt_completion", rows=3, tokens=90,
            scrub_report=report_path(target),
        )  # fmt: skip
    root = registry.datasets.artifacts.root
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert registry.datasets.all(tenant) == []
