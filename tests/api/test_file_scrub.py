"""Uploads scrubbed on request, through a real server: the stored file is the scrubbed one, its audit report
is kept beside it (summary in the file's record, the whole report at `/scrub_report`, shown on the model
card), a refused scrub stores nothing, and a version trained on the file carries the report's head.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lorafleet.privacy.audit import verify_report
from tests.api.test_uploads import stored_files
from tests.support.platform import Platform, start_job, wait_for_job

pytestmark = pytest.mark.integration

PATIENTS = ("Ifeoma Brandvold", "Teodor Quistgaard")
ROWS = [
    {
        "prompt": f"Patient {name} (MRN: 5510293{i}), phone 312-555-018{i}, e-mail pt{i}@clinic-mail.org.",
        "completion": json.dumps({"patient": name}),
    }
    for i, name in enumerate(PATIENTS * 4)
]
CONTENT = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
ORIGINALS = ("Brandvold", "Quistgaard", "55102930", "312-555-0181", "pt0@clinic-mail.org")


def post(client: httpx.Client, name: str, content: bytes, **form: str) -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune", **form})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scrubbed_upload_stores_the_scrubbed_rows_and_their_report(
    make_platform: Callable[..., Platform], random_adapter: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False)
    tenant = platform.tenant("clinic")
    answer = post(tenant.client, "notes.jsonl", CONTENT, scrub="true")
    assert answer.status_code == 201, answer.text
    file = answer.json()
    stored = tenant.client.get(f"/v1/files/{file['id']}/content").content.decode()
    assert [value for value in ORIGINALS if value in stored] == []
    assert len(stored.splitlines()) == file["rows"] == len(ROWS)

    report = tenant.client.get(f"/v1/files/{file['id']}/scrub_report").json()
    assert verify_report(report) == [] and len(report["entries"]) == len(ROWS)
    assert report["output_sha256"] == file["sha256"]  # the report describes the stored bytes
    assert file["scrub"] == {key: value for key, value in report.items() if key != "entries"}
    assert {"PERSON", "MEDICAL_RECORD_NUMBER", "PHONE_NUMBER", "EMAIL_ADDRESS"} <= set(file["scrub"]["found"])
    assert not any(value in json.dumps(report) for value in ORIGINALS)  # never a raw value
    listed = tenant.client.get("/v1/files").json()["data"]
    assert [f["scrub"]["head"] for f in listed] == [report["head"]]

    plain = post(tenant.client, "plain.jsonl", CONTENT).json()
    assert plain["scrub"] is None
    assert tenant.client.get(f"/v1/files/{plain['id']}/content").content == CONTENT
    missing = tenant.client.get(f"/v1/files/{plain['id']}/scrub_report")
    assert missing.status_code == 404 and "not scrubbed" in missing.json()["error"]["message"]

    platform.registry.adapters.register(
        tenant.id, "notes", random_adapter, base_model=str(tiny_dir), dataset_id=file["id"]
    )
    card = tenant.client.get("/v1/adapters/notes/versions/1/card").text
    assert "### Scrubbing of the training file" in card and report["head"] in card
    assert "| MEDICAL_RECORD_NUMBER |" in card

    files = tmp_path / "artifacts" / "tenants" / tenant.id / "files"
    assert sorted(p.name for p in stored_files(files)) == sorted(
        [f"{file['id']}.jsonl", f"{file['id']}.scrub.json", f"{plain['id']}.jsonl"]
    )
    assert tenant.client.delete(f"/v1/files/{file['id']}").is_success  # the report goes with the file
    assert [p.name for p in stored_files(files)] == [f"{plain['id']}.jsonl"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_scrub_that_cannot_run_stores_nothing(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False)
    tenant = platform.tenant("clinic")
    csv = post(tenant.client, "notes.csv", b"prompt,completion\nhi,there\n", scrub="true")
    assert csv.status_code == 400 and "scrubbing reads .jsonl files" in csv.json()["error"]["message"]
    assert csv.json()["error"]["param"] == "scrub"
    bad = post(tenant.client, "notes.jsonl", CONTENT + b"not json\n", scrub="true")
    assert bad.status_code == 400 and "notes.jsonl:9" in bad.json()["error"]["message"]
    assert "lorafleet-upload-" not in bad.text
    assert tenant.client.get("/v1/files").json()["data"] == []
    assert stored_files(tmp_path / "artifacts") == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_version_trained_on_a_scrubbed_file_carries_its_report(
    make_platform: Callable[..., Platform], tiny_dir: Path
) -> None:
    platform = make_platform(workers=1, serve_models=False)
    tenant = platform.tenant("clinic")
    file = post(tenant.client, "notes.jsonl", CONTENT, scrub="true").json()
    started = start_job(tenant.client, file["id"], "notes", str(tiny_dir), data={"max_length": 256})
    job = wait_for_job(tenant.client, started["id"])
    assert job["status"] == "succeeded", job
    version = tenant.client.get("/v1/adapters/notes/versions/1").json()
    scrub = file["scrub"]
    assert version["metrics"]["data_scrub"] == {
        "file": file["id"],
        "rows": scrub["rows"],
        "found": scrub["found"],
        "unscrubbed": scrub["unscrubbed"],
        "head": scrub["head"],
    }
