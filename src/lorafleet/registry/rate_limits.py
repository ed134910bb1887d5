"""Per-key rate limits as token buckets in the database, so every server replica draws from one bucket.

A key allowed `per_minute` requests holds at most `per_minute` tokens, refilled continuously at
`per_minute / 60` per second; a request takes one:

    tokens(t) = min(per_minute, tokens(t₀) + (t − t₀) · per_minute / 60)

The bucket is one row (`rate_buckets`), created full on first use, then read and written in one
transaction under a row lock (PostgreSQL `FOR UPDATE`; SQLite's `BEGIN IMMEDIATE` already holds the
write lock), so two replicas taking at once never both take the last token. Time is the servers' wall
clock (shared, unlike a monotonic one); a negative elapsed time (a replica's clock behind another's)
counts as zero, so it never takes tokens back.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lorafleet.errors import QuotaExceededError
from lorafleet.registry.database import Database
from lorafleet.registry.tables import RateBucket


class RateLimits:
    """`registry.rate_limits`: take one request from a key's bucket, or refuse with when to retry."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock  # wall-clock seconds; tests pass a hand-moved one

    def take(self, key_id: str, per_minute: int) -> None:
        """Count one request of `key_id`; `QuotaExceededError` (with `retry_after`) once it is used up."""
        moment = self.clock()
        with self.db.session() as session:
            bucket = _locked_bucket(session, key_id, full=float(per_minute), moment=moment)
            elapsed = max(0.0, moment - bucket.counted_at)
            tokens = min(float(per_minute), bucket.tokens + elapsed * per_minute / 60.0)
            allowed = tokens >= 1.0
            bucket.tokens, bucket.counted_at = (tokens - 1.0 if allowed else tokens), moment
        if not allowed:  # raised after the commit, so the refill up to now is kept
            raise QuotaExceededError(
                f"rate limit of {per_minute} requests per minute reached for this API key",
                retry_after=(1.0 - tokens) * 60.0 / per_minute,
            )


def _locked_bucket(session: Session, key_id: str, *, full: float, moment: float) -> RateBucket:
    """The key's bucket row, locked for this transaction; inserted full first when the key has none
    (`ON CONFLICT DO NOTHING`: another replica inserting it at the same moment is no error)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(RateBucket)
        .values(key_id=key_id, tokens=full, counted_at=moment)
        .on_conflict_do_nothing(index_elements=["key_id"])
    )
    return session.get_one(RateBucket, key_id, with_for_update=True, populate_existing=True)
