"""A real S3-compatible object store for tests: moto's server (`moto[server]`, a dev dependency) on 127.0.0.1.

`s3_server` (one per session) runs `ThreadedMotoServer` on a free port and yields its endpoint; `s3_env`
(per test) points the standard AWS environment variables at it (what s3fs/botocore read, in this
process and in every process it starts) and `s3_artifacts_url` is a fresh bucket of the test's own.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pytest

from tests.support.postgres import free_tcp_port

_bucket_numbers = itertools.count()

# moto accepts any credentials; these only have to be present (botocore refuses to sign without any).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "lorafleet-test",
    "AWS_SECRET_ACCESS_KEY": "lorafleet-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of moto's S3 server running in this process (threads), stopped after the session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in the test output
    port = free_tcp_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS variables that point s3fs at the test server, set in this process; returned for children."""
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_artifacts_url(s3_env: dict[str, str]) -> str:
    """`s3://BUCKET/artifacts` in an empty bucket of this test's own."""
    import boto3

    bucket = f"lorafleet-test-{next(_bucket_numbers)}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/artifacts"
