"""What tenants read about their jobs through a real server: events and errors that say what happened to
the job, naming their files as they uploaded them, and nothing of the server: no host paths, no process
ids, no host or worker names. That detail goes to the server log."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_jsonl
from tests.support.platform import Platform, start_job, upload, wait_for_job

pytestmark = pytest.mark.integration

# Prompts far longer than the job's max_length: the file is valid (the upload takes it), but training
# finds no completion token left after truncation and fails, naming the file.
LONG_ROWS = [{"prompt": "tell me " * 200, "completion": f"answer {i}"} for i in range(8)]
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[\w.~-]")  # a "/" starting a path, not "1/6" or "https://"


def texts(value: Any) -> Iterator[str]:
    """Every string in a JSON value (numbers are left out: a token count may equal a pid)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def leaks(text: str, secrets: list[str]) -> list[str]:
    """The server internals `text` shows: absolute paths, and any of `secrets` as a whole word."""
    found = [match.group() for match in ABSOLUTE_PATH.finditer(text)]
    return found + [
        secret for secret in secrets if re.search(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", text)
    ]


# what events say: no database logic (job claims run on both in tests/jobs)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_job_events_and_errors_show_tenants_no_server_internals(
    make_platform: Callable[..., Platform],
    qa_rows_file: Path,
    tiny_dir: Path,
    tmp_path: Path,
    lorafleet_home: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    platform = make_platform(serve_models=False, workers=1)
    tenant = platform.tenant("acme")
    good = upload(tenant.client, qa_rows_file).json()
    long_file = write_jsonl(tmp_path / "long.jsonl", LONG_ROWS)
    bad = upload(tenant.client, long_file)
    assert bad.status_code == 201, bad.text  # nothing wrong with the file itself

    jobs = [start_job(tenant.client, file["id"], "bot", str(tiny_dir)) for file in (good, bad.json())]
    succeeded, failed = (wait_for_job(tenant.client, job["id"]) for job in jobs)

    assert succeeded["status"] == "succeeded", succeeded
    assert failed["status"] == "failed", failed
    error = failed["error"]["message"]
    assert error.startswith("long.jsonl: no training examples left"), error  # the file as the tenant knows it
    worker = platform.registry.jobs.get(tenant.id, failed["id"]).worker_id
    job_pids = re.findall(r"job process (\d+) started on ", caplog.text)  # the server log names them
    assert len(job_pids) == 2
    secrets = [str(lorafleet_home), str(tmp_path), socket.gethostname(), worker, str(os.getpid()), *job_pids]
    wrong = []
    for job in (succeeded, failed):
        events = tenant.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 1000}).json()
        assert len(events["data"]) > 3
        for text in [*texts(events), *texts(job["error"])]:
            if found := leaks(text, secrets):
                wrong.append(f"{job['status']} job: {text!r} shows {found}")
    assert not wrong, "\n".join(wrong)

    # The server log has the detail: the data file's path, the job processes, the worker.
    log = caplog.text
    assert re.search(rf"job {failed['id']}: /\S+\.jsonl: no training examples left", log), log[-3000:]
    assert re.search(rf"job {succeeded['id']}: job process \d+ started on ", log)
    assert re.search(rf"{failed['id']}: started \(.*\) on worker {worker}", log)
