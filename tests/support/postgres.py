"""A throwaway PostgreSQL cluster for integration tests, installed from Debian packages when missing.

`temporary_postgres` runs `initdb` into a fresh directory, starts the server with `pg_ctl -w` on
127.0.0.1 and a free port (trust auth, fsync off), and removes everything on exit. PostgreSQL refuses
to run as root, so as root every server binary runs as the `postgres` OS user through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_OS_USER = "postgres"
DATABASE = "lorafleet"
_LIB_ROOT = Path("/usr/lib/postgresql")
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_INSTALL_HINT = (
    "install PostgreSQL first, e.g. `sudo apt-get install -y --no-install-recommends postgresql` "
    "(Debian/Ubuntu), or run the tests as root so the test setup installs it"
)


def _is_root() -> bool:
    return os.geteuid() == 0


def _has_server_binaries(bin_dir: Path) -> bool:
    return all((bin_dir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """`/usr/lib/postgresql/15/bin` -> (15,); non-numeric versions sort first."""
    digits = re.findall(r"\d+", bin_dir.parent.name)
    return tuple(int(d) for d in digits)


def find_pg_bin() -> Path | None:
    """The folder holding `initdb`, `pg_ctl` and `postgres`: the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates = [d for d in _LIB_ROOT.glob("*/bin") if _has_server_binaries(d)]
    if candidates:
        return max(candidates, key=_version_key)
    found = shutil.which("pg_ctl")
    if found is not None:
        bin_dir = Path(found).resolve().parent
        if _has_server_binaries(bin_dir):
            return bin_dir
    return None


def _ensure_os_user() -> None:
    """Create the `postgres` system user when a package install left none (as root only)."""
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", PG_OS_USER],
            check=True,
        )


def install_postgres() -> Path:
    """Return the PostgreSQL bin folder, installing the Debian `postgresql` package first when missing.

    Only root can install; anyone else without PostgreSQL gets a RuntimeError saying how to install it.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if not _is_root():
            raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {_INSTALL_HINT}")
        if shutil.which("apt-get") is None:
            raise RuntimeError(f"PostgreSQL is missing and apt-get is not available: {_INSTALL_HINT}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], check=True, env=env
        )
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError(
                f"installed the Debian `postgresql` package but found no initdb/pg_ctl under {_LIB_ROOT}"
            )
    if _is_root():
        _ensure_os_user()
    return bin_dir


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _as_server_user(argv: Sequence[str]) -> list[str]:
    """As root, run `argv` as the postgres OS user (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", PG_OS_USER, "--", *argv] if _is_root() else list(argv)


def _run(argv: Sequence[str], *, cwd: Path, what: str) -> None:
    result = subprocess.run(_as_server_user(argv), cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{output}")


def _check_traversable(folder: Path) -> None:
    """As root, the postgres user must be able to walk down to `folder` (pytest's tmp dirs are mode 700)."""
    if not _is_root():
        return
    for parent in [folder, *folder.parents]:
        if not parent.stat().st_mode & stat.S_IXOTH:
            raise RuntimeError(
                f"{parent} is not traversable by the {PG_OS_USER} user (mode "
                f"{oct(parent.stat().st_mode & 0o777)}): give temporary_postgres a base_dir such as "
                f"{tempfile.gettempdir()}"
            )


def _log_tail(log_file: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _start(bin_dir: Path, data_dir: Path, socket_dir: Path, log_file: Path, attempts: int = 3) -> int:
    """`pg_ctl start -w` on a free port, retrying with another port if someone took it meanwhile."""
    for attempt in range(attempts):
        port = free_tcp_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={socket_dir} -c port={port} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        argv = [str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data_dir), "-l", str(log_file)]
        result = subprocess.run(
            _as_server_user([*argv, "-o", options]), cwd=socket_dir, capture_output=True, text=True
        )
        if result.returncode == 0:
            return port
        log = _log_tail(log_file)
        if "could not bind" not in log or attempt == attempts - 1:
            raise RuntimeError(
                f"pg_ctl start failed (exit {result.returncode}) for {data_dir}:\n"
                f"{(result.stdout + result.stderr).strip()}\n--- server log ---\n{log}"
            )
    raise AssertionError("unreachable")


@contextmanager
def temporary_postgres(base_dir: Path) -> Iterator[str]:
    """Run a throwaway cluster in a new folder under `base_dir`; yield the URL of its `lorafleet` database.

    The URL is `postgresql+psycopg://postgres@127.0.0.1:PORT/lorafleet` (trust auth, no password).
    On exit the server stops (`pg_ctl stop -m fast`) and the folder is removed.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {_INSTALL_HINT}")
    _check_traversable(base_dir)
    top = Path(tempfile.mkdtemp(prefix="lorafleet-pg-", dir=base_dir))
    started = False
    try:
        top.chmod(0o755)
        if _is_root():
            shutil.chown(top, user=PG_OS_USER, group=PG_OS_USER)
        data_dir, log_file = top / "data", top / "server.log"
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                PG_OS_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=top,
            what="initdb",
        )
        port = _start(bin_dir, data_dir, top, log_file)
        started = True
        admin_url = f"postgresql+psycopg://{PG_OS_USER}@127.0.0.1:{port}/postgres"
        yield fresh_database(admin_url, DATABASE)
    finally:
        try:
            if started:
                _run(
                    [str(bin_dir / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(top / "data")],
                    cwd=top,
                    what="pg_ctl stop",
                )
        finally:
            shutil.rmtree(top, ignore_errors=True)


def _checked_name(name: str) -> str:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern} (lowercase, digits, _)")
    return name


def _execute_autocommit(admin_url: str, statement: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def fresh_database(admin_url: str, name: str) -> str:
    """Create the empty database `name` in the cluster of `admin_url`; return its URL."""
    _execute_autocommit(admin_url, f'CREATE DATABASE "{_checked_name(name)}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    """Drop the database `name` from the cluster of `admin_url`, ending any connections still open to it."""
    _execute_autocommit(admin_url, f'DROP DATABASE IF EXISTS "{_checked_name(name)}" WITH (FORCE)')
