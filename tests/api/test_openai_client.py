"""The official `openai` client against the whole server (one worker): upload, fine-tune, follow the job,
cancel another, then serve the fine-tuned model — streamed text equal to the whole response at temperature 0.
Errors arrive as the client's typed exceptions. Training makes this the slow test, so it runs on SQLite only
(test_lifecycle trains on both databases).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.support.platform import QUICK_RECIPE, Platform

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

FINISHED = ("succeeded", "failed", "cancelled")


def wait_until_finished(client: openai.OpenAI, job_id: str, *, timeout: float = 180.0) -> FineTuningJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINISHED:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_the_openai_client_fine_tunes_and_serves(
    make_platform: Callable[..., Platform], qa_rows_file: Path, tiny_dir: Path
) -> None:
    platform = make_platform(workers=1)
    acme, rival = platform.tenant("acme"), platform.tenant("rival")
    client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=acme.key, max_retries=0)

    file = client.files.create(file=qa_rows_file, purpose="fine-tune")
    assert (file.filename, file.bytes, file.purpose) == (
        "train.jsonl",
        qa_rows_file.stat().st_size,
        "fine-tune",
    )
    assert client.files.retrieve(file.id).id == file.id
    assert client.files.content(file.id).read() == qa_rows_file.read_bytes()
    assert [f.id for f in client.files.list()] == [file.id]

    recipe = {"recipe": QUICK_RECIPE}
    job = client.fine_tuning.jobs.create(
        model=str(tiny_dir), training_file=file.id, suffix="x", extra_body=recipe
    )
    assert job.status in ("queued", "running") and job.training_file == file.id
    # One worker: the second job waits behind the first, so it is cancelled while still queued.
    other = client.fine_tuning.jobs.create(
        model=str(tiny_dir), training_file=file.id, suffix="y", extra_body=recipe
    )
    assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"

    done = wait_until_finished(client, job.id)
    assert done.status == "succeeded", done.error
    model = done.fine_tuned_model
    assert model == "x@1" and done.trained_tokens
    listed = {j.id: j.status for j in client.fine_tuning.jobs.list()}
    assert listed == {job.id: "succeeded", other.id: "cancelled"}
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message == "job succeeded"  # newest first
    assert any(event.type == "metrics" for event in events)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)  # finished already

    assert model in [m.id for m in client.models.list()]
    settings = {"model": model, "max_tokens": 8, "temperature": 0.0}
    text = client.completions.create(prompt="q1", **settings).choices[0].text
    streamed = client.completions.create(prompt="q1", stream=True, **settings)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == text
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "q1"}]
    reply = client.chat.completions.create(messages=messages, **settings)
    assert reply.model == model and reply.usage is not None and reply.usage.completion_tokens > 0
    chunks = client.chat.completions.create(messages=messages, stream=True, **settings)
    deltas = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert deltas == reply.choices[0].message.content

    stranger = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=rival.key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(messages=messages, **settings)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(file.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{platform.url}/v1", api_key="lf-unknown", max_retries=0).models.list()
