"""Cancelling a running job through a real server: the answer is `cancelled` at once (as OpenAI's), the
job stays cancelled, the worker stops the run's process, and nothing it trained is registered or stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.support.platform import QUICK_RECIPE, Platform, start_job, upload

pytestmark = pytest.mark.integration

STARTUP_SECONDS = 180  # a worker's job process imports torch and loads the model before step 1
STOP_SECONDS = 60  # from the cancel to the job process's exit


def job_process(job_id: str) -> psutil.Process:
    """The running job process of `job_id`: a child of this process (the server's worker is a thread here)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "lorafleet.jobs.runner" in child.cmdline() and any(job_id in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no job process of {job_id}")


def stored_files(root: Path) -> list[str]:
    return (
        [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()] if root.exists() else []
    )


def test_cancelling_a_running_job_answers_cancelled_and_stops_its_run(
    make_platform: Callable[..., Platform], qa_rows_file: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False, workers=1)
    tenant = platform.tenant("acme")
    file_id = upload(tenant.client, qa_rows_file).json()["id"]
    training = {**QUICK_RECIPE["training"], "max_steps": 400, "checkpoint_steps": 0}  # still training
    job_id = start_job(tenant.client, file_id, "bot", str(tiny_dir), training=training)["id"]
    deadline = time.monotonic() + STARTUP_SECONDS
    while (job := tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json())["step"] < 1:
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.1)
    process = job_process(job_id)

    answer = tenant.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["fine_tuned_model"]) == ("cancelled", None)
    assert answer.json()["finished_at"] is not None
    seen = set()
    deadline = time.monotonic() + STOP_SECONDS
    while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:  # the worker stops the run
        seen.add(tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"])
        assert time.monotonic() < deadline, "the job process did not stop"
        time.sleep(0.05)
    time.sleep(1)  # the worker's last heartbeat and its record of the run's end
    seen.add(tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"])
    assert seen == {"cancelled"}

    events = tenant.client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    messages = [event["message"] for event in events]
    assert "job cancelled; its run is being stopped" in messages
    assert "run stopped; no adapter version was registered" in messages
    assert tenant.client.get("/v1/adapters").json()["data"] == []
    assert [name for name in stored_files(tmp_path / "artifacts") if "/adapters/" in name] == []
    again = tenant.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]["message"]
