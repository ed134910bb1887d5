"""The registry's database: the URL (SQLite under `$LORAFLEET_HOME` by default), sessions, migrations.

SQLite is shared by the server and its worker processes, so every transaction starts with
`BEGIN IMMEDIATE` (it takes the write lock up front and waits for it, instead of failing when a read
transaction later tries to write) in WAL mode with a busy timeout. PostgreSQL needs none of that.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from lorafleet.errors import ConfigError
from lorafleet.home import lorafleet_home

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATE_LOCK = threading.Lock()
_MIGRATE_LOCK_KEY = 7215016411  # any fixed number: the advisory lock all lorafleet migrations share
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_database_url() -> str:
    """`$LORAFLEET_DATABASE_URL`, else a SQLite file `$LORAFLEET_HOME/registry.db`."""
    return os.environ.get("LORAFLEET_DATABASE_URL") or f"sqlite:///{lorafleet_home() / 'registry.db'}"


def connect(url: str) -> Engine:
    """An SQLAlchemy engine for `url` (SQLite or PostgreSQL); `ConfigError` naming a bad URL."""
    try:
        parsed = make_url(url)
    except Exception as err:
        raise ConfigError(f"database URL {url!r} is not a URL ({err})") from err
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":  # pick psycopg 3, which is what the `postgres` extra installs
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ConfigError(f"database URL {url!r}: lorafleet supports sqlite:/// and postgresql:// URLs")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event below opens transactions
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creating it in an empty database)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's context is process-wide (one migration per process at a time), and on PostgreSQL a
    # server and its workers starting on an empty database take turns through an advisory lock.
    with _MIGRATE_LOCK, engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """An engine and its session factory; `session()` is one transaction (commit, or rollback on error)."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = url or default_database_url()
        self.engine = connect(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            migrate(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
