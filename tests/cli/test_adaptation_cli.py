"""`lorafleet adapters policy|rollouts` through Typer's `CliRunner`, on the local registry (the same HTTP API
in-process): a policy file set, shown, removed; bad files as one-line errors naming the field."""

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
def adapter(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """Tenant acme with adapter `bot` at version 1 in production."""
    monkeypatch.setenv("LORAFLEET_BASE_MODEL", str(tiny_dir))  # what a policy's job recipe is checked on
    registry = Registry()
    tenant = registry.tenants.create("acme").id
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    registry.adapters.register(tenant, "bot", folder, base_model=str(tiny_dir))
    registry.adapters.promote(tenant, "bot", "production", 1, actor="test")
    yield registry
    registry.close()


def test_policy_set_show_remove_and_rollouts(adapter: Registry, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("triggers:\n  drift: {p_value: 0.01, window: 50}\ncanary: {percent: 20}\n")
    assert "bot:production: policy set by admin" in ok("adapters", "policy", "bot", "--file", str(policy))
    shown = ok("adapters", "policy", "bot")
    assert "the controller has not looked at it yet" in shown
    stored = json.loads(ok("adapters", "policy", "bot", "--json"))["policy"]
    assert stored["triggers"]["drift"]["window"] == 50 and stored["canary"]["percent"] == 20
    assert "no rollout of bot yet" in ok("adapters", "rollouts", "bot")
    assert "is no longer adapted" in ok("adapters", "policy", "bot", "--clear")
    assert_friendly_error(invoke("adapters", "policy", "bot", "--tenant", "acme"), "no adaptation policy")


def test_bad_policies_are_one_line_errors_naming_the_field(adapter: Registry, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("canary: {percent: 150}\n")
    result = invoke("adapters", "policy", "bot", "--file", str(policy), "--tenant", "acme")
    assert_friendly_error(result, "policy.yaml", "policy.canary.percent")
    policy.write_text("train: {recipe: {lora: {target_modules: [nope]}}}\n")
    result = invoke("adapters", "policy", "bot", "--file", str(policy), "--tenant", "acme")
    assert_friendly_error(result, "policy.train.recipe", "nope")
    both = invoke("adapters", "policy", "bot", "--file", str(policy), "--clear", "--tenant", "acme")
    assert_friendly_error(both, "--file or --clear")
