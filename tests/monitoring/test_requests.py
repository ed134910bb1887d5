"""The request log's writer (in the background, never raising, never blocking; pruning on start and
periodically) and the training rows corrections become."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from lorafleet.errors import NotFoundError
from lorafleet.monitoring.requests import RequestLogWriter, Skipped, correction_rows
from lorafleet.registry import Registry
from lorafleet.registry.tables import LoggedCompletion

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    opened = Registry(f"sqlite:///{tmp_path / 'registry.db'}", artifacts_url=str(tmp_path / "artifacts"))
    yield opened
    opened.close()


@pytest.fixture
def tenant_id(registry: Registry) -> str:
    return registry.tenants.create("acme").id


def logged(tenant_id: str, completion_id: str, **fields: Any) -> LoggedCompletion:
    values: dict[str, Any] = {
        "model": "bot",
        "messages": MESSAGES,
        "text": "hello",
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "latency_ms": 12.5,
        "finish_reason": "stop",
        **fields,
    }
    return LoggedCompletion(id=completion_id, tenant_id=tenant_id, **values)


def age(registry: Registry, completion_id: str, days: float) -> None:
    with registry.db.session() as session:
        session.execute(
            update(LoggedCompletion)
            .where(LoggedCompletion.id == completion_id)
            .values(created_at=time.time() - days * 86_400)
        )


def test_recorded_completions_are_written_in_the_background(registry: Registry, tenant_id: str) -> None:
    writer = RequestLogWriter(registry.requests, retention_days=30)
    writer.start()
    try:
        for i in range(20):
            writer.record(logged(tenant_id, f"chatcmpl-{i}"))
        assert writer.flush(timeout=10)
    finally:
        writer.close()

    assert registry.requests.get(tenant_id, "chatcmpl-19").text == "hello"
    writer.record(logged(tenant_id, "chatcmpl-late"))  # closed: ignored, not raised
    assert writer.flush(timeout=0)


def test_a_row_that_cannot_be_written_is_logged_and_loses_only_itself(
    registry: Registry, tenant_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RequestLogWriter(registry.requests, retention_days=30)
    for row in (
        logged(tenant_id, "chatcmpl-1"),
        logged("tn-gone", "chatcmpl-2"),
        logged(tenant_id, "chatcmpl-3"),
    ):
        writer.record(row)  # queued before the thread starts: one batch
    with caplog.at_level(logging.ERROR, logger="lorafleet.monitoring.requests"):
        writer.start()
        assert writer.flush(timeout=10)
        writer.close()

    assert [registry.requests.get(tenant_id, i).id for i in ("chatcmpl-1", "chatcmpl-3")] == [
        "chatcmpl-1",
        "chatcmpl-3",
    ]
    assert "could not log completion chatcmpl-2" in caplog.text
    with pytest.raises(NotFoundError):
        registry.requests.get("tn-gone", "chatcmpl-2")


def test_a_full_queue_drops_the_row_without_waiting(
    registry: Registry, tenant_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RequestLogWriter(registry.requests, retention_days=30, max_pending=1)  # not started
    writer.record(logged(tenant_id, "chatcmpl-1"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lorafleet.monitoring.requests"):
        writer.record(logged(tenant_id, "chatcmpl-2"))
    assert time.monotonic() - started < 1.0
    assert "chatcmpl-2" in caplog.text and "queue is full" in caplog.text

    writer.start()
    assert writer.flush(timeout=10)
    writer.close()
    assert registry.requests.get(tenant_id, "chatcmpl-1").id == "chatcmpl-1"
    with pytest.raises(NotFoundError):
        registry.requests.get(tenant_id, "chatcmpl-2")


def test_rows_past_the_retention_are_pruned_on_start_and_periodically(
    registry: Registry, tenant_id: str
) -> None:
    registry.requests.add([logged(tenant_id, "chatcmpl-old"), logged(tenant_id, "chatcmpl-new")])
    registry.requests.add_feedback(tenant_id, "chatcmpl-old", score=0.5)
    age(registry, "chatcmpl-old", days=31)
    writer = RequestLogWriter(registry.requests, retention_days=30, prune_seconds=0.05)
    writer.start()
    try:
        wait_until_gone(registry, tenant_id, "chatcmpl-old")
        age(registry, "chatcmpl-new", days=30.5)  # past the retention later: the next prune takes it
        wait_until_gone(registry, tenant_id, "chatcmpl-new")
    finally:
        writer.close()
    assert registry.requests.feedback(tenant_id) == ([], False)


def wait_until_gone(registry: Registry, tenant_id: str, completion_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            registry.requests.get(tenant_id, completion_id)
        except NotFoundError:
            return
        time.sleep(0.02)
    raise AssertionError(f"{completion_id} was not pruned")


# --- training rows --------------------------------------------------------------------------------------


def test_chat_corrections_are_the_prompt_messages_and_the_correction() -> None:
    pairs = [(logged("tn", "chatcmpl-1"), "Hi.")]

    rows, skipped = correction_rows(pairs)

    assert rows == [{"messages": [*MESSAGES, {"role": "assistant", "content": "Hi."}]}] and skipped == []


def test_text_corrections_are_prompt_completion_rows_unless_mixed_with_chats() -> None:
    text = (logged("tn", "cmpl-1", messages=None, prompt="2 + 2 ="), " 4")

    alone, _ = correction_rows([text])
    mixed, _ = correction_rows([(logged("tn", "chatcmpl-2"), "Hi."), text])

    assert alone == [{"prompt": "2 + 2 =", "completion": " 4"}]
    assert mixed[1] == {
        "messages": [{"role": "user", "content": "2 + 2 ="}, {"role": "assistant", "content": " 4"}]
    }


def test_a_row_the_data_layer_refuses_is_left_out_and_named() -> None:
    late_system = [{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}]
    pairs = [(logged("tn", "chatcmpl-1", messages=late_system), "Hi."), (logged("tn", "chatcmpl-2"), "Yo.")]

    rows, skipped = correction_rows(pairs)

    assert len(rows) == 1 and rows[0]["messages"][-1]["content"] == "Yo."
    assert skipped == [Skipped("chatcmpl-1", "messages[1]: a system message may only come first")]
