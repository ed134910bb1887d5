"""Training file uploads through a real server: a bad upload is refused naming the file and line, and leaves
nothing behind (no file listed, no artifact, no dataset row, no usage); a good one is stored byte for byte
with its SHA-256, rows and tokens; a file a job uses cannot be deleted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.platform import QUICK_RECIPE, Platform

pytestmark = pytest.mark.integration

LIMIT = 200  # max_upload_bytes of these servers
FORMATS = "prompt_completion {prompt, completion}"  # the expected formats are named
ROWS = [{"prompt": "q1", "completion": "a1"}, {"prompt": "q2", "completion": "a2"}]
GOOD = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
BIG = "".join(json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) + "\n" for i in range(10)).encode()
WRONG_TYPE = GOOD.splitlines(keepends=True)[0] + b'{"prompt": "q", "completion": 5}\n'


@dataclass(frozen=True)
class BadUpload:
    what: str
    name: str
    content: bytes
    status: int
    message: tuple[str, ...]  # pieces the error message holds
    purpose: str = "fine-tune"


BAD_UPLOADS = [
    BadUpload("a line that is not JSON", "train.jsonl", GOOD + b"not json\n", 400, ("train.jsonl:3", "JSON")),
    BadUpload("a field of the wrong type", "train.jsonl", WRONG_TYPE, 400, ("train.jsonl:2", "'completion'")),
    BadUpload(
        "unknown columns", "cols.jsonl", b'{"foo": "bar"}\n', 400, ("cols.jsonl:1", "['foo']", FORMATS)
    ),
    BadUpload("an empty file", "empty.jsonl", b"", 400, ("empty.jsonl", "no usable rows")),
    BadUpload("an unsupported suffix", "train.txt", GOOD, 400, ("train.txt", ".jsonl")),
    BadUpload("another purpose", "train.jsonl", GOOD, 400, ("purpose", "fine-tune"), purpose="assistants"),
    BadUpload("over the size limit", "big.jsonl", BIG, 413, ("big.jsonl", f"{LIMIT:,} bytes")),
]


def post_file(client: httpx.Client, name: str, content: bytes, purpose: str = "fine-tune") -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, content)}, data={"purpose": purpose})


def stored_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_bad_uploads_are_refused_by_line_and_store_nothing(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    assert len(GOOD) < LIMIT < len(BIG)
    platform = make_platform(serve_models=False, max_upload_bytes=LIMIT)
    tenant = platform.tenant("acme")
    wrong = []
    for bad in BAD_UPLOADS:
        answer = post_file(tenant.client, bad.name, bad.content, bad.purpose)
        message = answer.json().get("error", {}).get("message", "") if answer.status_code >= 400 else ""
        missing = [piece for piece in bad.message if piece not in message]
        if answer.status_code != bad.status or missing or "lorafleet-upload-" in message:  # no temporary path
            wrong.append(
                f"{bad.what}: {answer.status_code} (wanted {bad.status}, lacking {missing}) {answer.text}"
            )
    assert not wrong, "\n".join(wrong)

    assert tenant.client.get("/v1/files").json()["data"] == []
    assert platform.registry.datasets.all(tenant.id) == []
    assert stored_files(tmp_path / "artifacts") == []
    assert tenant.client.get("/v1/usage").json()["data"] == []  # not even a storage record


def test_a_good_upload_is_stored_as_sent(
    make_platform: Callable[..., Platform], tiny_dir: Path, tmp_path: Path
) -> None:
    from lorafleet.data import read_examples, tokenize_example
    from lorafleet.models import load_tokenizer

    platform = make_platform(serve_models=False)
    tenant = platform.tenant("acme")
    answer = post_file(tenant.client, "train.jsonl", GOOD)
    assert answer.status_code == 201, answer.text
    file = answer.json()
    (tmp_path / "train.jsonl").write_bytes(GOOD)
    tokenizer = load_tokenizer(str(tiny_dir))
    examples = read_examples(tmp_path / "train.jsonl").examples
    tokens = sum(len(tokenize_example(e, tokenizer, max_length=1 << 30)) for e in examples)
    assert file["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert (file["bytes"], file["rows"], file["tokens"]) == (len(GOOD), 2, tokens)
    assert (file["filename"], file["purpose"], file["format"]) == (
        "train.jsonl",
        "fine-tune",
        "prompt_completion",
    )
    assert tenant.client.get(f"/v1/files/{file['id']}").json() == file
    assert tenant.client.get(f"/v1/files/{file['id']}/content").content == GOOD

    used = post_file(tenant.client, "used.jsonl", GOOD).json()
    body = {"model": str(tiny_dir), "training_file": used["id"], "adapter": "bot", "recipe": QUICK_RECIPE}
    assert (
        tenant.client.post("/v1/fine_tuning/jobs", json=body).status_code == 200
    )  # stays queued: no workers
    refused = tenant.client.delete(f"/v1/files/{used['id']}")
    assert refused.status_code == 409, refused.text
    assert used["id"] in refused.json()["error"]["message"]
    assert tenant.client.get(f"/v1/files/{used['id']}/content").content == GOOD
    assert len(stored_files(tmp_path / "artifacts")) == 2
    first_page = tenant.client.get("/v1/files", params={"limit": 1}).json()
    assert ([f["id"] for f in first_page["data"]], first_page["has_more"]) == ([file["id"]], True)
    last_page = tenant.client.get("/v1/files", params={"after": file["id"]}).json()
    assert ([f["id"] for f in last_page["data"]], last_page["has_more"]) == ([used["id"]], False)

    deleted = tenant.client.delete(f"/v1/files/{file['id']}")
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert tenant.client.get(f"/v1/files/{file['id']}").status_code == 404
    assert [f["id"] for f in tenant.client.get("/v1/files").json()["data"]] == [used["id"]]
    assert len(stored_files(tmp_path / "artifacts")) == 1
