"""`lorafleet gate`, `adapters gate-policy`, `adapters suites`, `eval --suite`, `promote --force`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.cli.test_platform_cli import ROWS, fake_adapter, ok, ok_json
from tests.helpers import assert_friendly_error, invoke, write_jsonl


@pytest.fixture
def registry() -> Iterator[Registry]:
    opened = Registry()
    yield opened
    opened.close()


@pytest.fixture
def tickets(registry: Registry, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Tenant acme, a suite of `tickets` registered through `lorafleet eval --suite`, v1 that learned it,
    v2 that forgot it; the suite's id."""
    monkeypatch.setenv("LORAFLEET_BASE_MODEL", str(tiny_dir))  # the tokenizer that counts the rows' tokens
    tenant = registry.tenants.create("acme").id
    registry.adapters.register(tenant, "tickets", fake_adapter(tmp_path / "v0", 0), base_model="tiny")
    held_out = write_jsonl(tmp_path / "held-out.jsonl", ROWS)
    args = ["--adapter", "tickets", "--metric", "exact_match", "--tenant", "acme", "--json"]
    suite: str = ok_json("eval", "--suite", str(held_out), *args[:-1])["id"]
    first = registry.adapters.version(tenant, "tickets", 1)
    for seed, score in ((2, 0.4), (3, 0.9)):
        metrics = {
            "evaluation": {"suites": {suite: {"adapter": "tickets", "metric": "exact_match", "score": score}}}
        }
        registry.adapters.register(
            tenant,
            "tickets",
            fake_adapter(tmp_path / f"v{seed}", seed),
            base_model="tiny",
            parent_version_id=first.id,
            metrics=metrics,
        )
    return suite


def test_gate_policy_gate_and_forced_promote(registry: Registry, tickets: str) -> None:
    suite = tickets
    assert "tickets has no promotion gate" in ok("adapters", "gate-policy", "tickets", "--tenant", "acme")
    shown = ok(
        "adapters",
        "gate-policy",
        "tickets",
        "--min-score",
        f"{suite}=0.5",
        "--max-forgetting",
        "0.1",
        "--tenant",
        "acme",
    )
    assert "min_score" in shown and "every ancestor suite" in shown
    failing = invoke("gate", "tickets@2", "--tenant", "acme")
    assert failing.exit_code == 1, failing.output
    assert "FAIL" in failing.stdout and "tickets@2 FAILS its promotion gate" in failing.stdout
    passing = invoke("gate", "tickets@3", "--tenant", "acme")
    assert passing.exit_code == 0 and "tickets@3 passes" in passing.stdout, passing.output

    refused = invoke("adapters", "promote", "tickets", "2", "--tenant", "acme")
    assert_friendly_error(refused, "tickets@2 fails its promotion gate")
    assert "HTTP 409" in refused.output
    assert "tickets:production → v2" in ok(
        "adapters", "promote", "tickets", "2", "--force", "--tenant", "acme"
    )
    [move] = ok_json("adapters", "history", "tickets", "--tenant", "acme")["data"]
    assert (move["forced"], move["actor"], move["report"]["passed"]) == (True, "admin", False)
    table = ok("adapters", "history", "tickets", "--tenant", "acme")
    assert "forced" in table and "failed" in table

    listed = ok_json("adapters", "suites", "list", "tickets", "--tenant", "acme")["data"]
    assert [s["id"] for s in listed] == [suite]
    assert_friendly_error(invoke("gate", "tickets", "--tenant", "acme"), "NAME@VERSION")
    assert_friendly_error(
        invoke("adapters", "gate-policy", "tickets", "--min-score", "own:0.5", "--tenant", "acme"),
        "SUITE=LIMIT",
    )
    assert "no promotion gate" in ok("adapters", "gate-policy", "tickets", "--clear", "--tenant", "acme")


def test_a_malformed_suite_file_is_named_by_line(
    registry: Registry, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFLEET_BASE_MODEL", str(tiny_dir))
    registry.tenants.create("acme")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a"}\n{"prompt": 3}\n')
    result = invoke("adapters", "suites", "add", "tickets", str(bad), "--tenant", "acme")
    assert_friendly_error(result, "bad.jsonl:2")
    assert ok_json("adapters", "list", "--tenant", "acme")["data"] == []  # nothing registered
