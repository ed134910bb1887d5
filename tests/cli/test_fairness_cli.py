"""`lorafleet fairness`: a registry version's report is measured on the tiny model, stored, and gated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.cli.test_platform_cli import ok, ok_json
from tests.helpers import assert_friendly_error, invoke, write_jsonl

NAMES = ("Maria Lopez", "Tom Berg", "Aisha Okafor", "Liam Murphy")
ROWS = [
    {
        "prompt": f"Extract this ticket as JSON.\n\nHello, {name} here. He wants a refund of {i}0 dollars.",
        "completion": json.dumps({"customer": name, "amount": i * 10}),
    }
    for i, name in enumerate(NAMES)
] + [{"prompt": "No person in this one.", "completion": json.dumps({"customer": None, "amount": 1})}]
GROUPS = ("--group", "anglo_female", "--group", "hispanic_male", "--group", "south_asian_female")


@pytest.fixture
def registry() -> Iterator[Registry]:
    opened = Registry()
    yield opened
    opened.close()


def test_fairness_of_a_registry_version_is_stored_and_gated(
    registry: Registry, random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    tenant = registry.tenants.create("acme").id
    registry.adapters.register(tenant, "tickets", random_adapter, base_model=str(tiny_dir))
    suite = write_jsonl(tmp_path / "tickets.jsonl", ROWS)
    common = ("--suite", str(suite), "--tenant", "acme", "--max-new-tokens", "4", *GROUPS)

    report = ok_json("fairness", "tickets@1", *common, "--output", str(tmp_path / "report.json"))
    assert report["rows"] == 4 and report["skipped_rows"] == 1
    assert set(report["groups"]) == {"anglo_female", "hispanic_male", "south_asian_female"}
    assert len(report["pairs"]) == 3 and report["name_field"] == "customer"
    assert json.loads((tmp_path / "report.json").read_text()) == report
    stored = registry.adapters.version(tenant, "tickets", 1).metrics["fairness"]
    assert stored["max_significant_gap"] == report["max_significant_gap"]

    ok("adapters", "gate-policy", "tickets", "--max-fairness-gap", "0.5", "--tenant", "acme")
    checks = ok_json("gate", "tickets@1", "--tenant", "acme")["checks"]
    assert [c["check"] for c in checks] == ["max_fairness_gap"]
    assert checks[0]["value"] == report["max_significant_gap"] and checks[0]["passed"]

    shown = ok("fairness", "tickets@1", *common)
    assert "largest significant gap" in shown and "stored with the version" in shown

    card = ok("adapters", "card", "tickets@1", "--tenant", "acme")
    assert card.startswith("# Model card: tickets@1\n") and f"`{tiny_dir}`" in card
    for section in ("## Data lineage", "## Training", "## Evaluation", "## Promotion gate", "## Exports"):
        assert section in card
    fairness = card.split("## Fairness")[1].split("## Promotion gate")[0]
    assert "| anglo_female |" in fairness and "| south_asian_female |" in fairness
    gate = card.split("## Promotion gate")[1]
    assert "tickets@1 **passes** its gate" in gate and "| max_fairness_gap |" in gate
    assert "No eval suite was scored (not measured)" in card and "No exports." in card
    written = tmp_path / "card.md"
    assert "wrote the model card" in ok(
        "adapters", "card", "tickets@1", "-o", str(written), "--tenant", "acme"
    )
    assert written.read_text() == card
    assert_friendly_error(invoke("adapters", "card", "tickets@9", "--tenant", "acme"), "tickets")


def test_fairness_of_a_local_adapter_and_bad_options(
    random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    suite = write_jsonl(tmp_path / "tickets.jsonl", ROWS)
    args = ("fairness", str(random_adapter), "--suite", str(suite), "--model", str(tiny_dir))
    report = ok_json(*args, "--max-new-tokens", "2", *GROUPS[:4])
    assert set(report["groups"]) == {"anglo_female", "hispanic_male"}
    assert_friendly_error(
        invoke(*args, "--group", "martian", "--group", "anglo_male"), "unknown group 'martian'"
    )
    assert_friendly_error(invoke(*args, "--metric", "perplexity"), "--metric 'perplexity'")
    assert_friendly_error(invoke(*args, "--name-field", "agent", *GROUPS[:4]), "--name-field")
