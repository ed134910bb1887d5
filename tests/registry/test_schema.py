"""The Alembic migration builds exactly the ORM's schema; opening again is a no-op; no torch import."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from lorafleet.registry import Registry
from lorafleet.registry.database import MIGRATIONS, Database, migrate
from lorafleet.registry.tables import Base
from tests.registry.contention import contend_at_commit, contend_before


def test_migration_creates_exactly_the_orm_schema(empty_database_url: str, tmp_path: Path) -> None:
    registry = Registry(empty_database_url, artifacts_url=str(tmp_path / "artifacts"))
    try:
        with registry.db.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            tables = set(inspect(conn).get_table_names())
    finally:
        registry.close()
    assert differences == []
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def test_opening_again_is_a_no_op(registry: Registry, open_registry: Callable[[], Registry]) -> None:
    tenant = registry.tenants.create("acme")
    again = open_registry()  # migrates the same database a second time
    with again.db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    assert current == ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert again.tenants.get("acme").id == tenant.id
    assert [t.name for t in open_registry().tenants.all()] == ["acme"]


_OPEN = "import sys; from lorafleet.registry import Database; Database(sys.argv[1]).close()"


@pytest.mark.integration
def test_a_second_first_migration_waits_for_the_first(empty_database_url: str) -> None:
    """A server and a worker process started at once both migrate the same empty database.

    The worker's migration starts while the server's is about to commit its new tables.
    """

    def worker() -> None:
        result = subprocess.run(
            [sys.executable, "-c", _OPEN, empty_database_url], capture_output=True, text=True
        )
        assert result.returncode == 0, [line for line in result.stderr.splitlines() if "Error" in line][-1:]

    server = Database(empty_database_url, create=False)
    try:
        with contend_at_commit(server.engine, worker, patience=30.0) as errors:
            migrate(server.engine)
    finally:
        server.close()
    assert errors == []


def test_a_registry_opened_while_another_thread_migrates(database_url: str, tmp_path: Path) -> None:
    """A process may open registries from several threads (one per worker thread, say).

    The second opens while the first is inside Alembic, reading the schema's revision.
    """
    first, second = Database(database_url, create=False), Database(database_url, create=False)
    try:
        with contend_before(first.engine, lambda: migrate(second.engine), "alembic_version") as errors:
            migrate(first.engine)
    finally:
        first.close()
        second.close()
    assert errors == []


def test_importing_and_opening_the_registry_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lorafleet.registry import Registry\n"
        "registry = Registry(sys.argv[1], artifacts_url=sys.argv[2])\n"
        "registry.tenants.create('acme')\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, f"sqlite:///{tmp_path / 'r.db'}", str(tmp_path / "artifacts")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
