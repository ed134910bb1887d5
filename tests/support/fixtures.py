"""Pytest fixtures for a real PostgreSQL: one cluster per session, one fresh database per test.

Registered for the whole suite by `pytest_plugins = ["tests.support.fixtures"]` in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import drop_database, fresh_database, install_postgres, temporary_postgres

_database_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The admin URL of a throwaway PostgreSQL cluster (installed from Debian packages when missing)."""
    install_postgres()
    with temporary_postgres(Path(tempfile.gettempdir())) as admin_url:
        yield admin_url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of an empty database of its own for this test, dropped afterwards."""
    name = f"test_{next(_database_numbers)}"
    url = fresh_database(postgres_server, name)
    yield url
    drop_database(postgres_server, name)
