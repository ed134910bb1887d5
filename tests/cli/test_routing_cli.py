"""`lorafleet adapters canary|events` and `lorafleet experiments` through Typer's `CliRunner`, on the local
registry (the same HTTP API in-process): set, show, clear, audited; bad input as one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorafleet.registry import Registry
from tests.helpers import assert_friendly_error, invoke


def ok(*args: str) -> str:
    result = invoke(*args, "--tenant", "acme")
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


@pytest.fixture
def two_versions(tmp_path: Path) -> Iterator[Registry]:
    """Tenant acme with adapter `bot` at versions 1 and 2 (files only: the registry does not load them)."""
    registry = Registry()
    tenant = registry.tenants.create("acme").id
    for seed in (1, 2):
        folder = tmp_path / f"v{seed}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "seed": seed}))
        registry.adapters.register(tenant, "bot", folder, base_model="tiny")
    yield registry
    registry.close()


def test_canary_set_show_clear_and_events(two_versions: Registry) -> None:
    assert "bot: 10% of users → bot@2" in ok(
        "adapters", "canary", "bot", "--target", "bot@2", "--percent", "10"
    )
    assert "bot: 10% of users → bot@2" in ok("adapters", "canary", "bot")
    shown = json.loads(ok("adapters", "canary", "bot", "--json"))
    assert (shown["target"], shown["percent"]) == ("bot@2", 10.0)
    aliased = ok(
        "adapters", "canary", "bot", "--model", "bot:production", "--target", "bot@1", "--percent", "5"
    )
    assert "bot:production: 5% of users → bot@1" in aliased
    assert "canary cleared" in ok("adapters", "canary", "bot", "--clear")

    events = json.loads(ok("adapters", "events", "bot", "--json"))["data"]
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("canary_set", "admin"),
        ("canary_set", "admin"),
        ("canary_cleared", "admin"),
    ]
    table = ok("adapters", "events", "bot")
    assert "canary_set" in table and "canary_cleared" in table
    later = json.loads(ok("adapters", "events", "bot", "--since", str(events[1]["id"]), "--json"))["data"]
    assert [e["kind"] for e in later] == ["canary_cleared"]


def test_canary_errors_are_one_line(two_versions: Registry) -> None:
    none = invoke("adapters", "canary", "bot", "--tenant", "acme")
    assert_friendly_error(none, "no canary on 'bot'", "HTTP 404")
    unknown = invoke("adapters", "canary", "bot", "--target", "bot@9", "--percent", "5", "--tenant", "acme")
    assert_friendly_error(unknown, "bot@9", "HTTP 404")
    half = invoke("adapters", "canary", "bot", "--target", "bot@2", "--tenant", "acme")
    assert_friendly_error(half, "--percent")
    both = invoke("adapters", "canary", "bot", "--clear", "--target", "bot@2", "--tenant", "acme")
    assert_friendly_error(both, "--clear")
    too_much = invoke(
        "adapters", "canary", "bot", "--target", "bot@2", "--percent", "150", "--tenant", "acme"
    )
    assert too_much.exit_code == 2 and "--percent" in too_much.output  # Typer's own range check


def test_experiments_set_list_clear(two_versions: Registry) -> None:
    assert "no experiments" in ok("experiments", "list")
    answer = ok("experiments", "set", "trial", "--model", "bot", "--arm", "bot@1=70", "--arm", "bot@2=30")
    assert "trial: bot → bot@1 70%, bot@2 30%" in answer
    listed = ok("experiments", "list")
    assert "trial" in listed and "bot@2 30%" in listed
    assert json.loads(ok("experiments", "list", "--json"))["data"][0]["model"] == "bot"
    assert "experiment trial on bot cleared" in ok("experiments", "clear", "trial")
    kinds = [e["kind"] for e in json.loads(ok("adapters", "events", "bot", "--json"))["data"]]
    assert kinds == ["experiment_set", "experiment_cleared"]

    uneven = invoke("experiments", "set", "x", "--model", "bot", "--arm", "bot@1=70", "--tenant", "acme")
    assert_friendly_error(uneven, "arms", "sum to 70", "HTTP 400")
    malformed = invoke("experiments", "set", "x", "--model", "bot", "--arm", "bot@1", "--tenant", "acme")
    assert_friendly_error(malformed, "--arm 'bot@1'", "TARGET=PERCENT")
    assert_friendly_error(invoke("experiments", "clear", "nope", "--tenant", "acme"), "nope", "HTTP 404")


@pytest.mark.parametrize("command", [("adapters", "canary"), ("adapters", "events"), ("experiments", "set")])
def test_routing_commands_have_help(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: lorafleet {' '.join(command)}" in result.stdout
