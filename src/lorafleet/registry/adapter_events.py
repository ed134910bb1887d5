"""An adapter's audited events, added inside the caller's own transaction (see `tables.AdapterEvent`).

`Adapters.record_event` and `Adapters.events` are the calls from outside the registry; registry code
that changes something about an adapter calls `add_event` in the same session, so the change and its
record commit or roll back together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.errors import ConfigError
from lorafleet.registry.tables import Adapter, AdapterEvent

MAX_KIND_LENGTH = 40  # the column's width
MAX_ACTOR_LENGTH = 128


def add_event(
    session: Session,
    adapter: Adapter,
    kind: str,
    *,
    actor: str,
    detail: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> AdapterEvent:
    """Add one event of `adapter` to the session's transaction; `ConfigError` for a bad kind or actor."""
    if not kind or len(kind) > MAX_KIND_LENGTH or not kind.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(
            f"event kind {kind!r}: give a short word of letters, digits, '_' or '-' "
            f"(at most {MAX_KIND_LENGTH} characters), such as 'canary_set'",
            field="kind",
        )
    if not actor or len(actor) > MAX_ACTOR_LENGTH:
        raise ConfigError(
            f"event actor {actor[:20]!r}: give 1 to {MAX_ACTOR_LENGTH} characters", field="actor"
        )
    event = AdapterEvent(
        tenant_id=adapter.tenant_id,
        adapter_id=adapter.id,
        kind=kind,
        actor=actor,
        job_id=job_id,
        detail=detail or {},
    )
    session.add(event)
    session.flush()  # assigns its id, the event's place in the adapter's history
    return event


def events_of(session: Session, adapter: Adapter, *, since_id: int | None = None) -> list[AdapterEvent]:
    """The adapter's events after `since_id` (all, when None), oldest first."""
    query = select(AdapterEvent).where(AdapterEvent.adapter_id == adapter.id)
    if since_id is not None:
        query = query.where(AdapterEvent.id > since_id)
    return list(session.scalars(query.order_by(AdapterEvent.id)))
