"""Taking the oldest queued row of a queue table (jobs, exports) for one worker, safely under concurrency.

On PostgreSQL the row is selected `FOR UPDATE SKIP LOCKED`, so workers claiming at once take different
rows; on SQLite (one writer at a time) the conditional update decides. Either way the update only
succeeds while the row is still queued, so a row is never taken twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lorafleet.registry.database import Database

Row = TypeVar("Row")


def claim_oldest(
    db: Database,
    table: type[Row],
    values: dict[str, Any],
    *,
    taken: Callable[[Session, Row], None] | None = None,
) -> Row | None:
    """Set `values` on the oldest row of `table` whose status is queued and return it (None when there is
    none); `taken(session, row)` runs in the same transaction (to record an event, say)."""
    column: Any = table  # the table's mapped columns, which mypy cannot see on a type variable
    for _ in range(5):  # another worker may take the selected row between select and update
        with db.session() as session:
            row_id = session.scalar(
                select(column.id)
                .where(column.status == "queued")
                .order_by(column.created_at, column.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if row_id is None:
                return None
            done = session.execute(
                update(column).where(column.id == row_id, column.status == "queued").values(**values)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                row = session.get_one(table, row_id, populate_existing=True)
                if taken is not None:
                    taken(session, row)
                return row
    return None
