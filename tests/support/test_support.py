"""The test support starts a real PostgreSQL and a real uvicorn server, and both answer."""

from __future__ import annotations

import os
import sys

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from tests.support.postgres import drop_database, fresh_database
from tests.support.server import free_port, run_server, run_server_process

pytestmark = pytest.mark.integration


def test_postgres_answers_through_sqlalchemy_and_psycopg(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
            address = conn.execute(sa.text("SELECT host(inet_server_addr())")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert address == "127.0.0.1"
    assert engine.dialect.driver == "psycopg"


def test_fresh_databases_are_separate(postgres_server: str, postgres_url: str) -> None:
    other_url = fresh_database(postgres_server, "separate_check")
    first, second = sa.create_engine(postgres_url), sa.create_engine(other_url)
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE marker (id int)"))
        with second.connect() as conn:
            found = conn.execute(sa.text("SELECT to_regclass('public.marker')")).scalar_one()
            database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    finally:
        first.dispose()
        second.dispose()
        drop_database(postgres_server, "separate_check")
    assert found is None
    assert database == "separate_check" == make_url(other_url).database
    assert make_url(postgres_url).database != database


def test_skip_locked_skips_a_row_locked_by_another_connection(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    claim = sa.text("SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE jobs (id int PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO jobs VALUES (1), (2)"))
        with engine.connect() as worker_a, engine.connect() as worker_b:
            worker_b.execute(sa.text("SET lock_timeout = '5s'"))  # a broken SKIP LOCKED fails, not hangs
            worker_b.commit()
            with worker_a.begin():
                claimed_by_a = worker_a.execute(claim).scalar_one()
                with worker_b.begin():
                    claimed_by_b = worker_b.execute(claim).scalar_one()
                    row_1_for_b = worker_b.execute(
                        sa.text("SELECT id FROM jobs WHERE id = 1 FOR UPDATE SKIP LOCKED")
                    ).all()
            with worker_b.begin():  # worker_a committed, so its lock is gone
                claimed_after_release = worker_b.execute(claim).scalar_one()
    finally:
        engine.dispose()
    assert (claimed_by_a, claimed_by_b) == (1, 2)
    assert row_1_for_b == []
    assert claimed_after_release == 1


def test_run_server_serves_a_fastapi_app_and_stops() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "ok"}

    with run_server(app) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, timeout=5) as client:
            response = client.get("/ping")
        assert response.status_code == 200
        assert response.json() == {"pong": "ok"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/ping", timeout=2)


def test_run_server_process_waits_for_ready_and_stops_the_process() -> None:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    ready_url = f"http://127.0.0.1:{port}/"
    with run_server_process(argv, env=os.environ, ready_url=ready_url, timeout=20) as proc:
        assert proc.poll() is None
        assert httpx.get(ready_url, timeout=5).status_code == 200
    assert proc.returncode is not None


def test_run_server_process_reports_the_output_of_a_process_that_dies() -> None:
    argv = [sys.executable, "-c", "print('cannot start: no settings'); raise SystemExit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"exited with 3(.|\n)*cannot start: no settings"),
        run_server_process(argv, env=os.environ, ready_url=f"http://127.0.0.1:{free_port()}/", timeout=20),
    ):
        pass
