"""The request log and feedback through a real server: every completion (chat or text, streamed or not) is
logged under its response `id` with the version that served it; a tenant can turn off logging of text;
feedback on one's own completions, 404 on anyone else's; corrections exported as a training file a job
accepts; the retention; a log that cannot be written never fails the request."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from lorafleet.registry.tables import LoggedCompletion
from tests.helpers import save_random_adapter
from tests.support.platform import Platform, Tenant, start_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def register(platform: Platform, tenant: Tenant, tiny_dir: Path, tmp_path: Path) -> str:
    """Adapter `support` v1 of `tenant`; the version's id."""
    from lorafleet.models import load_base

    base, _ = load_base(str(tiny_dir), device="cpu")
    adapter = save_random_adapter(base, tmp_path / "support", seed=3)
    return str(
        platform.registry.adapters.register(tenant.id, "support", adapter, base_model=str(tiny_dir)).id
    )


def chat(client: httpx.Client, model: str, messages: list[dict[str, str]] = MESSAGES) -> dict[str, Any]:
    answer = client.post(
        "/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 6, "temperature": 0}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def logged(platform: Platform, tenant: Tenant, completion_id: str) -> LoggedCompletion:
    assert platform.app.state.request_log.flush(timeout=10)
    row: LoggedCompletion = platform.registry.requests.get(tenant.id, completion_id)
    return row


def error_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["error"]
    return error


def test_completions_are_logged_with_their_version_tokens_latency_and_text(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    version_id = register(platform, acme, tiny_dir, tmp_path)
    key_id = platform.registry.tenants.authenticate(acme.key).id

    reply = chat(acme.client, "support")
    row = logged(platform, acme, reply["id"])

    assert reply["id"].startswith("chatcmpl-")
    assert (row.model, row.adapter_version_id, row.key_id, row.finish_reason) == (
        "support",
        version_id,
        key_id,
        reply["choices"][0]["finish_reason"],
    )
    assert (row.prompt_tokens, row.completion_tokens) == (
        reply["usage"]["prompt_tokens"],
        reply["usage"]["completion_tokens"],
    )
    assert 0 < row.latency_ms < 60_000
    assert (row.messages, row.prompt, row.text) == (MESSAGES, None, reply["choices"][0]["message"]["content"])

    body = {"model": str(tiny_dir), "prompt": "q1", "max_tokens": 5, "temperature": 0, "stream": True}
    with acme.client.stream("POST", "/v1/completions", json=body) as streamed:
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(event) for event in events[:-1]]
    row = logged(platform, acme, chunks[0]["id"])
    assert events[-1] == "[DONE]" and {chunk["id"] for chunk in chunks} == {row.id}
    assert row.id.startswith("cmpl-") and row.adapter_version_id is None and row.model == str(tiny_dir)
    assert (row.prompt, row.messages) == ("q1", None)
    assert row.text == "".join(chunk["choices"][0]["text"] for chunk in chunks if chunk["choices"])
    assert row.completion_tokens > 0


def test_a_tenant_with_text_logging_off_is_logged_without_text(
    make_platform: Callable[..., Platform], tiny_dir: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    assert platform.admin.get(f"/v1/tenants/{acme.id}").json()["settings"] == {"log_text": True}

    changed = platform.admin.patch(f"/v1/tenants/{acme.id}", json={"log_text": False})
    assert changed.status_code == 200, changed.text
    assert changed.json()["settings"] == {"log_text": False}
    assert error_of(acme.client.patch(f"/v1/tenants/{acme.id}", json={"log_text": True}), 403)
    assert error_of(platform.admin.patch(f"/v1/tenants/{acme.id}", json={"log": 1}), 400)["param"] == "log"

    reply = chat(acme.client, str(tiny_dir))
    row = logged(platform, acme, reply["id"])

    assert (row.prompt, row.messages, row.text) == (None, None, None)
    assert row.completion_tokens == reply["usage"]["completion_tokens"]
    sent = acme.client.post("/v1/feedback", json={"completion_id": reply["id"], "correction": "Hi."})
    assert sent.status_code == 201, sent.text  # feedback is kept; the correction cannot be exported
    refused = error_of(acme.client.post("/v1/feedback/corrections/export"), 409)
    assert "no corrections" in refused["message"] and "without their text" in refused["message"]


def test_feedback_on_own_completions_and_not_found_on_anyone_elses(
    make_platform: Callable[..., Platform], tiny_dir: Path
) -> None:
    platform = make_platform()
    acme, rival = platform.tenant("acme"), platform.tenant("rival")
    mine, theirs = chat(acme.client, str(tiny_dir))["id"], chat(rival.client, str(tiny_dir))["id"]

    # at once, as a client would: the log is written in the background, and feedback waits for it
    sent = acme.client.post("/v1/feedback", json={"completion_id": mine, "score": 0.25, "label": "terse"})
    assert sent.status_code == 201, sent.text
    feedback = sent.json()
    assert feedback["id"].startswith("fb-") and feedback["object"] == "feedback"
    assert (feedback["completion_id"], feedback["score"], feedback["label"], feedback["correction"]) == (
        mine,
        0.25,
        "terse",
        None,
    )
    assert feedback["key_id"] == platform.registry.tenants.authenticate(acme.key).id
    listed = acme.client.get("/v1/feedback").json()
    assert listed["data"] == [feedback] and listed["has_more"] is False
    assert acme.client.get("/v1/feedback", params={"completion_id": theirs}).json()["data"] == []
    assert rival.client.get("/v1/feedback").json()["data"] == []

    foreign = acme.client.post("/v1/feedback", json={"completion_id": theirs, "score": 1.0})
    unknown = acme.client.post("/v1/feedback", json={"completion_id": "chatcmpl-nope", "score": 1.0})
    assert error_of(foreign, 404) == {**error_of(unknown, 404), "message": f"no completion {theirs!r}"}
    assert error_of(unknown, 404)["message"] == "no completion 'chatcmpl-nope'"
    assert rival.client.get("/v1/feedback").json()["data"] == []

    second = acme.client.post("/v1/feedback", json={"completion_id": mine, "correction": "Hello!"}).json()
    page = acme.client.get("/v1/feedback", params={"limit": 1}).json()
    rest = acme.client.get("/v1/feedback", params={"limit": 1, "after": page["data"][0]["id"]}).json()
    assert [f["id"] for f in page["data"] + rest["data"]] == [feedback["id"], second["id"]]
    assert page["has_more"] and not rest["has_more"]
    assert error_of(acme.client.get("/v1/feedback", params={"after": "fb-nope"}), 404)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ('{"score": 0.5}', "completion_id", "Field required"),
        ('{"completion_id": "ID"}', None, "score, label or correction"),
        ('{"completion_id": "ID", "score": null, "label": null}', None, "score, label or correction"),
        ('{"completion_id": "ID", "score": 1.5}', "score", "less than or equal to 1"),
        ('{"completion_id": "ID", "score": -0.5}', "score", "greater than or equal to 0"),
        ('{"completion_id": "ID", "score": NaN}', "score", "finite number"),
        ('{"completion_id": "ID", "score": Infinity}', "score", "finite number"),
        ('{"completion_id": "ID", "label": ""}', "label", "at least 1 character"),
        ('{"completion_id": "ID", "correction": "  "}', "correction", "blank"),
        ('{"completion_id": "ID", "scor": 0.5}', "scor", "Extra inputs"),
        ('{"completion_id": "ID", "correction": "a\\u0000b"}', "correction", "NUL character"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_field(
    make_platform: Callable[..., Platform], tiny_dir: Path, body: str, param: str | None, words: str
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    completion_id = chat(acme.client, str(tiny_dir))["id"]

    answer = acme.client.post(
        "/v1/feedback",
        content=body.replace("ID", completion_id),
        headers={"Content-Type": "application/json"},
    )

    error = error_of(answer, 400)
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert words in error["message"]
    assert acme.client.get("/v1/feedback").json()["data"] == []


def test_corrections_become_a_training_file_a_job_accepts(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    register(platform, acme, tiny_dir, tmp_path)
    asked = [{"role": "user", "content": "What is 2 + 2?"}]
    by_adapter, by_base = chat(acme.client, "support", asked), chat(acme.client, str(tiny_dir))
    scored = chat(acme.client, str(tiny_dir), [{"role": "user", "content": "thanks"}])
    for completion_id, fields in [
        (by_adapter["id"], {"correction": "5"}),
        (by_base["id"], {"correction": "Hi.", "score": 0.0}),
        (scored["id"], {"score": 1.0}),
        (by_adapter["id"], {"correction": "4"}),  # the latest correction is the one exported
    ]:
        sent = acme.client.post("/v1/feedback", json={"completion_id": completion_id, **fields})
        assert sent.status_code == 201, sent.text

    exported = acme.client.post("/v1/feedback/corrections/export")
    assert exported.status_code == 201, exported.text
    file = exported.json()
    content = acme.client.get(f"/v1/files/{file['id']}/content")
    rows = [json.loads(line) for line in content.text.splitlines()]

    assert rows == [
        {"messages": [*asked, {"role": "assistant", "content": "4"}]},
        {"messages": [*MESSAGES, {"role": "assistant", "content": "Hi."}]},
    ]
    assert (file["object"], file["purpose"], file["format"], file["rows"], file["skipped"]) == (
        "file",
        "fine-tune",
        "chat",
        2,
        [],
    )
    assert file["filename"].startswith("corrections-") and file["tokens"] > 0
    assert file["id"] in [f["id"] for f in acme.client.get("/v1/files").json()["data"]]
    job = start_job(acme.client, file["id"], "support", str(tiny_dir))  # queued: no workers run it
    assert (job["status"], job["training_file"]) == ("queued", file["id"])

    only = acme.client.post("/v1/feedback/corrections/export", json={"adapter": "support"}).json()
    only_rows = acme.client.get(f"/v1/files/{only['id']}/content").text.splitlines()
    assert [json.loads(line) for line in only_rows] == rows[:1] and "support" in only["filename"]
    missing = acme.client.post("/v1/feedback/corrections/export", json={"adapter": "nope"})
    assert error_of(missing, 404)["message"] == "no adapter 'nope'"


def test_the_log_keeps_completions_for_the_retention(
    make_platform: Callable[..., Platform], tiny_dir: Path
) -> None:
    platform = make_platform(request_log_days=2)
    acme = platform.tenant("acme")
    old, new = chat(acme.client, str(tiny_dir))["id"], chat(acme.client, str(tiny_dir))["id"]
    assert acme.client.post("/v1/feedback", json={"completion_id": old, "score": 1.0}).status_code == 201
    with platform.registry.db.session() as session:
        session.execute(
            update(LoggedCompletion)
            .where(LoggedCompletion.id == old)
            .values(created_at=LoggedCompletion.created_at - 3 * 86_400)
        )

    assert platform.app.state.request_log.prune() == 1

    assert error_of(acme.client.post("/v1/feedback", json={"completion_id": old, "score": 1.0}), 404)
    assert acme.client.get("/v1/feedback").json()["data"] == []
    assert logged(platform, acme, new).id == new


def test_a_log_that_cannot_be_written_never_fails_the_request(
    make_platform: Callable[..., Platform],
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")

    def broken(completions: Any) -> None:
        raise RuntimeError("the database is down")

    monkeypatch.setattr(platform.registry.requests, "add", broken)
    with caplog.at_level(logging.ERROR, logger="lorafleet.monitoring.requests"):
        reply = chat(acme.client, str(tiny_dir))
        assert platform.app.state.request_log.flush(timeout=10)

    assert reply["choices"][0]["message"]["content"] is not None
    assert f"could not log completion {reply['id']}" in caplog.text
    assert sum(day["requests"] for day in acme.client.get("/v1/usage").json()["data"]) == 1  # still metered
