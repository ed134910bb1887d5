"""Registry fixtures: a `Registry` on SQLite and on a real PostgreSQL, and small fake artifacts.

Every test that takes `registry` (or `database_url`) runs twice, ids `sqlite` and `postgres` (the
latter marked `integration`: it starts a real server); the artifact store is a local directory under
the test's tmp_path in both cases. No torch: an adapter here is a folder of a few small files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, NullPool, create_engine, text

from lorafleet.registry import Database, Registry
from lorafleet.registry.tables import Base, Dataset, Tenant
from tests.support.postgres import drop_database, fresh_database


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy (copying is faster than migrating)."""
    path = tmp_path_factory.mktemp("registry-template") / "registry.db"
    Database(f"sqlite:///{path}").close()
    return path


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server: str) -> Iterator[Engine]:
    """One PostgreSQL database for the registry tests, migrated once and emptied before each test.

    Creating, migrating and dropping a database per test costs about half a second; deleting the few
    rows of a migrated one costs milliseconds. A test that needs no schema takes `empty_database_url`.
    """
    url = fresh_database(postgres_server, "registry_tests")
    Database(url).close()
    engine = create_engine(url, poolclass=NullPool)
    yield engine
    engine.dispose()
    drop_database(postgres_server, "registry_tests")


BOTH_DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=BOTH_DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a migrated database without rows: a SQLite file under tmp_path, or PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    engine: Engine = request.getfixturevalue("migrated_postgres")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL lock_timeout = '10s'"))  # a connection a test leaked fails, not hangs
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture(params=BOTH_DATABASES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a database with no schema at all: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def registry(database_url: str, artifacts_dir: Path) -> Iterator[Registry]:
    """A migrated registry on `database_url` with its artifacts under tmp_path/artifacts."""
    opened = Registry(database_url, artifacts_url=str(artifacts_dir))
    yield opened
    opened.close()


@pytest.fixture
def open_registry(database_url: str, artifacts_dir: Path) -> Iterator[Callable[[], Registry]]:
    """`open_registry()`: another Registry on the same database and artifact store (closed afterwards)."""
    opened: list[Registry] = []

    def open_one() -> Registry:
        opened.append(Registry(database_url, artifacts_url=str(artifacts_dir)))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


@pytest.fixture
def tenant(registry: Registry) -> Tenant:
    return registry.tenants.create("acme")


@pytest.fixture
def other_tenant(registry: Registry) -> Tenant:
    return registry.tenants.create("globex")


@pytest.fixture
def make_adapter_dir(tmp_path: Path) -> Callable[..., Path]:
    """`make_adapter_dir(name, weights=b"...")`: a fake adapter directory (config + weights + a subdir)."""

    def make(name: str = "adapter", weights: bytes = b"\x00\x01weights") -> Path:
        folder = tmp_path / "sources" / name
        (folder / "extra").mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8}')
        (folder / "adapter_model.safetensors").write_bytes(weights)
        (folder / "extra" / "notes.txt").write_text("trained on tests")
        return folder

    return make


@pytest.fixture
def make_dataset_file(tmp_path: Path) -> Callable[..., Path]:
    """`make_dataset_file(name, rows=3)`: a small JSONL training file."""

    def make(name: str = "train.jsonl", rows: int = 3) -> Path:
        path = tmp_path / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f'{{"prompt": "q{i}", "completion": "a{i}"}}\n' for i in range(rows)))
        return path

    return make


@pytest.fixture
def add_dataset(registry: Registry, make_dataset_file: Callable[..., Path]) -> Callable[..., Dataset]:
    """`add_dataset(tenant_id, name="train.jsonl", rows=3)`: upload a small file as a validated dataset."""

    def add(tenant_id: str, name: str = "train.jsonl", rows: int = 3) -> Dataset:
        source = make_dataset_file(name, rows=rows)
        return registry.datasets.add(
            tenant_id, source, filename=name, format="prompt_completion", rows=rows, tokens=10 * rows
        )

    return add
