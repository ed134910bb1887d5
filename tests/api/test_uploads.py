"""Training file uploads through a real server: a bad upload is refused naming the file and line, and leaves
nothing behind (no file listed, no artifact, no dataset row, no usage); a good one is stored byte for byte
with its SHA-256, rows and tokens; a file a job uses cannot be deleted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
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


# --- the limit, enforced as the body arrives ------------------------------------------------------------

STREAM_LIMIT = 256 * 1024  # max_upload_bytes of the streaming tests
ALLOWANCE = 16 * 1024  # what the server takes beyond the limit for the multipart envelope (ENVELOPE_BYTES)
CHUNK = 16 * 1024
BOUNDARY = "lorafleet-test-boundary"
ROW = (json.dumps({"prompt": "q", "completion": "x" * 1000}) + "\n").encode()


class PacedBody:
    """A multipart upload of `file_bytes` bytes of JSONL, pulled by the client chunk by chunk with a short
    pause between chunks (as a network would pace them); `pulled` counts the bytes the client took."""

    HEAD = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()

    def __init__(self, file_bytes: int, pause: float = 0.005) -> None:
        self.file_bytes, self.pause = file_bytes, pause
        self.size = len(self.HEAD) + file_bytes + len(self.TAIL)
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        yield self._take(self.HEAD)
        rows = ROW * (CHUNK // len(ROW) + 1)
        for start in range(0, self.file_bytes, CHUNK):
            time.sleep(self.pause)
            yield self._take(rows[: min(CHUNK, self.file_bytes - start)])
        yield self._take(self.TAIL)

    def _take(self, piece: bytes) -> bytes:
        self.pulled += len(piece)
        return piece

    def post(self, client: httpx.Client, **headers: str) -> httpx.Response:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **headers}
        return client.post("/v1/files", content=iter(self), headers=headers)


def assert_refused_storing_nothing(
    answer: httpx.Response, platform: Platform, tenant_id: str, root: Path
) -> None:
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "file_too_large")
    assert f"over the upload limit of {STREAM_LIMIT:,} bytes" in error["message"]
    assert platform.registry.datasets.all(tenant_id) == []
    assert stored_files(root / "artifacts") == []


def test_an_upload_declared_over_the_limit_is_refused_before_its_body_is_read(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False, max_upload_bytes=STREAM_LIMIT)
    tenant = platform.tenant("acme")
    body = PacedBody(210 * 1024 * 1024, pause=0.001)  # 210 MB, announced in Content-Length

    started = time.monotonic()
    answer = body.post(tenant.client, **{"Content-Length": str(body.size)})

    assert body.pulled < STREAM_LIMIT  # answered on the headers: the client got no further than a few chunks
    assert time.monotonic() - started < 10
    assert_refused_storing_nothing(answer, platform, tenant.id, tmp_path)
    assert f"({body.size:,} bytes) is over" in answer.json()["error"]["message"]
    assert answer.headers["connection"] == "close"  # the server does not drain the rest


def test_a_chunked_upload_is_refused_once_it_passes_the_limit(
    make_platform: Callable[..., Platform], tmp_path: Path
) -> None:
    platform = make_platform(serve_models=False, max_upload_bytes=STREAM_LIMIT)
    tenant = platform.tenant("acme")
    body = PacedBody(50 * STREAM_LIMIT)  # no Content-Length: Transfer-Encoding chunked

    answer = body.post(tenant.client)

    assert answer.request.headers["transfer-encoding"] == "chunked"
    # The server stopped reading at the limit: the client pulled little past it (the chunks in flight).
    assert STREAM_LIMIT < body.pulled <= STREAM_LIMIT + ALLOWANCE + 4 * CHUNK
    assert_refused_storing_nothing(answer, platform, tenant.id, tmp_path)
    assert answer.headers["connection"] == "close"  # the server does not drain the rest


def test_a_file_just_under_the_limit_is_stored(make_platform: Callable[..., Platform]) -> None:
    platform = make_platform(serve_models=False, max_upload_bytes=STREAM_LIMIT)
    tenant = platform.tenant("acme")
    content = ROW * (STREAM_LIMIT // len(ROW))
    content += b" " * (STREAM_LIMIT - len(content) - 1) + b"\n"  # exactly the limit
    assert len(content) == STREAM_LIMIT

    answer = post_file(tenant.client, "train.jsonl", content)

    assert answer.status_code == 201, answer.text
    assert (answer.json()["bytes"], answer.json()["sha256"]) == (
        STREAM_LIMIT,
        hashlib.sha256(content).hexdigest(),
    )
    assert tenant.client.get(f"/v1/files/{answer.json()['id']}/content").content == content
    over = post_file(tenant.client, "train.jsonl", content + b"\n")  # one byte more: the route's own check
    assert over.status_code == 413 and "train.jsonl is over" in over.json()["error"]["message"]
