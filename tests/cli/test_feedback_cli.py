"""`lorafleet feedback` (send, list, corrections) and `lorafleet tenants settings` through Typer's
`CliRunner`, in direct mode on the SQLite registry of the test's $LORAFLEET_HOME (completions logged there
by hand)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorafleet.registry import Registry
from lorafleet.registry.tables import LoggedCompletion
from tests.helpers import assert_friendly_error, invoke

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


def ok(*args: str) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> Iterator[Registry]:
    """The registry of the direct-mode commands, with tenant acme and one logged chat completion."""
    monkeypatch.setenv("LORAFLEET_BASE_MODEL", str(tiny_dir))  # the tokenizer that counts exported tokens
    opened = Registry()
    tenant = opened.tenants.create("acme")
    completion = LoggedCompletion(
        id="chatcmpl-1",
        tenant_id=tenant.id,
        model="bot",
        messages=MESSAGES,
        text="5",
        prompt_tokens=9,
        completion_tokens=1,
        latency_ms=20.0,
        finish_reason="stop",
    )
    opened.requests.add([completion])
    yield opened
    opened.close()


def test_send_list_and_export_corrections(registry: Registry) -> None:
    sent = ok("feedback", "send", "chatcmpl-1", "--score", "0.5", "--label", "wrong", "--tenant", "acme")
    assert "recorded feedback fb-" in sent and "on chatcmpl-1" in sent
    assert_friendly_error(
        invoke("feedback", "corrections", "--tenant", "acme"), "no corrections to export", "HTTP 409"
    )
    corrected = ok_json("feedback", "send", "chatcmpl-1", "--correction", "4", "--tenant", "acme")

    listed = ok_json("feedback", "list", "--tenant", "acme")["data"]
    assert [(f["score"], f["label"], f["correction"]) for f in listed] == [
        (0.5, "wrong", None),
        (None, None, "4"),
    ]
    assert corrected["id"] in ok("feedback", "list", "--tenant", "acme", "--completion", "chatcmpl-1")

    exported = invoke("feedback", "corrections", "--tenant", "acme")
    assert exported.exit_code == 0, exported.output
    file_id = exported.stdout.split("as file ")[1].split(" ")[0]
    assert "stored 1 corrections" in exported.stdout and f"--file-id {file_id}" in exported.stdout
    dataset = registry.datasets.get(registry.tenants.get("acme").id, file_id)
    rows = registry.datasets.local_path(dataset).read_text().splitlines()
    assert [json.loads(row) for row in rows] == [
        {"messages": [*MESSAGES, {"role": "assistant", "content": "4"}]}
    ]


def test_bad_feedback_is_a_one_line_error_naming_the_field(registry: Registry) -> None:
    assert_friendly_error(
        invoke("feedback", "send", "chatcmpl-1", "--tenant", "acme"), "score, label or correction", "HTTP 400"
    )
    assert_friendly_error(
        invoke("feedback", "send", "chatcmpl-1", "--score", "2", "--tenant", "acme"), "score", "HTTP 400"
    )
    assert_friendly_error(
        invoke("feedback", "send", "chatcmpl-nope", "--score", "1", "--tenant", "acme"),
        "no completion 'chatcmpl-nope'",
        "HTTP 404",
    )
    assert_friendly_error(invoke("feedback", "send", "chatcmpl-1", "--score", "1"), "--tenant")


def test_tenant_settings_turn_text_logging_off(registry: Registry) -> None:
    assert ok_json("tenants", "settings", "acme")["settings"] == {"log_text": True}

    shown = ok("tenants", "settings", "acme", "--no-log-text")

    assert "log_text" in shown and "off" in shown
    assert registry.tenants.get("acme").log_text is False
    assert ok_json("tenants", "settings", "acme", "--log-text")["settings"] == {"log_text": True}


def test_feedback_has_help() -> None:
    result = invoke("feedback", "--help")
    assert result.exit_code == 0 and all(word in result.stdout for word in ("send", "list", "corrections"))
