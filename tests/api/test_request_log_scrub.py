"""`scrub_request_log`: a real server stores each completion's prompt and messages with their PHI replaced by
pseudonyms (one fake per person across the completion), and stores them as sent when the setting is off."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.test_feedback import chat, logged
from tests.support.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

NOTE = (
    "Patient Ifeoma Brandvold (MRN: 55102938) asks for her results; Mrs. Brandvold's e-mail is "
    "ifeoma.brandvold@example-mail.org and her phone 312-555-0187."
)
ORIGINALS = ("Ifeoma", "Brandvold", "55102938", "ifeoma.brandvold@example-mail.org", "312-555-0187")


def test_the_request_log_stores_scrubbed_text(make_platform: Callable[..., Platform], tiny_dir: Path) -> None:
    platform = make_platform(scrub_request_log=True)
    acme = platform.tenant("acme")

    reply = chat(acme.client, str(tiny_dir), [{"role": "user", "content": NOTE}])
    row = logged(platform, acme, reply["id"])
    assert row.messages is not None and row.messages[0]["role"] == "user"
    stored = row.messages[0]["content"]
    assert [value for value in ORIGINALS if value in stored] == []
    assert stored.startswith("Patient ") and "(MRN: " in stored and "e-mail is " in stored
    fake_last = stored.split("Mrs. ")[1].split("'s")[0]
    assert stored.split(" (MRN")[0].endswith(fake_last)  # one patient, one fake family name
    assert row.text is not None  # the answer is kept (scrubbed too)

    body = {"model": str(tiny_dir), "prompt": NOTE, "max_tokens": 4, "temperature": 0}
    answer = acme.client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    row = logged(platform, acme, answer.json()["id"])
    assert row.prompt is not None and [value for value in ORIGINALS if value in row.prompt] == []


def test_without_the_setting_the_request_log_stores_text_as_sent(
    make_platform: Callable[..., Platform], tiny_dir: Path
) -> None:
    platform = make_platform()
    acme = platform.tenant("acme")
    reply = chat(acme.client, str(tiny_dir), [{"role": "user", "content": NOTE}])
    assert logged(platform, acme, reply["id"]).messages == [{"role": "user", "content": NOTE}]
