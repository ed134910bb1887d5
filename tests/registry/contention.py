"""Deterministic races: run a contender at the worst moment of another transaction.

`contend_at_commit(engine, contender, after=...)` holds the first commit on `engine` that follows a
statement containing `after` (any commit when None); `contend_before(engine, contender, statement)`
holds the first statement containing `statement`. Held there, the contender is started in a thread
and the transaction waits until the contender is blocked behind it (PostgreSQL: a backend of the
database waits on a lock; SQLite: a short pause, the contender waits in `BEGIN IMMEDIATE`), has
finished, or `patience` seconds passed; then it goes on. So the contender meets the interleaving that
breaks things instead of a lucky one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, NullPool, create_engine, event, text

_WAITING = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND state = 'active' AND wait_event_type = 'Lock'"
)


class _Contender:
    """The contender's thread and the exception it raised, if any."""

    def __init__(self, engine: Engine, run: Callable[[], Any]) -> None:
        self.engine, self.run = engine, run
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def start_and_wait(self, patience: float) -> None:
        if self.thread is not None:  # only the first moment meets the contender
            return
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if self.engine.dialect.name != "postgresql":
            self.thread.join(timeout=0.3)
            return
        # autocommit: inside one transaction pg_stat_activity would show the same snapshot every time
        watcher = create_engine(self.engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            deadline = time.monotonic() + patience
            with watcher.connect() as conn:
                while self.thread.is_alive() and time.monotonic() < deadline:
                    if conn.execute(_WAITING).scalar_one():
                        return
                    time.sleep(0.01)
        finally:
            watcher.dispose()

    def finish(self, what: str) -> None:
        assert self.thread is not None, f"the contender never ran: {what} never happened"
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the contender is still blocked a minute later"

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as err:
            self.errors.append(err)


@contextmanager
def contend_at_commit(
    engine: Engine, contender: Callable[[], Any], *, after: str | None = None, patience: float = 2.0
) -> Iterator[list[BaseException]]:
    """Yield the list that receives the contender's exception (empty if it succeeded) after the block."""
    race = _Contender(engine, contender)
    armed = [after is None]

    def watch(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if after is not None and after.lower() in statement.lower():
            armed[0] = True

    def before_commit(_conn: Any) -> None:
        if armed[0]:
            race.start_and_wait(patience)

    event.listen(engine, "before_cursor_execute", watch)
    event.listen(engine, "commit", before_commit)
    try:
        yield race.errors
    finally:
        event.remove(engine, "commit", before_commit)
        event.remove(engine, "before_cursor_execute", watch)
    race.finish(f"a commit after {after!r}")


@contextmanager
def contend_before(
    engine: Engine, contender: Callable[[], Any], statement: str, *, patience: float = 2.0
) -> Iterator[list[BaseException]]:
    """Like `contend_at_commit`, but the contender starts before the first statement with `statement`."""
    race = _Contender(engine, contender)

    def before_statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if statement.lower() in sql.lower():
            race.start_and_wait(patience)

    event.listen(engine, "before_cursor_execute", before_statement)
    try:
        yield race.errors
    finally:
        event.remove(engine, "before_cursor_execute", before_statement)
    race.finish(f"a statement with {statement!r}")
