"""The request log: each completion served to a tenant and the tenant's feedback on it.

A logged completion carries the response id the client saw, the model as named, the adapter version
that served it, token counts, latency, why it ended and, unless the tenant turned `log_text` off, the
prompt (or chat messages) and the answer. Feedback (a score in [0, 1], a label, a correction) refers to
one of the tenant's own completions; another tenant's id is "not found", like an unknown one.
`prune(before)` deletes older completions with their feedback (the server's retention).

PostgreSQL stores no NUL character in text, and a model may generate one: a logged completion keeps
each as U+FFFD; feedback holding one is refused, and an id holding one is not found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from lorafleet.errors import ConfigError, NotFoundError
from lorafleet.registry.database import Database
from lorafleet.registry.tables import Adapter, AdapterVersion, Feedback, LoggedCompletion, Tenant, owned

NUL = "\x00"


@dataclass(frozen=True)
class ServedWindow:
    """A version's requests over a span of time: the feedback scores on them, how many, how many failed."""

    scores: list[float]
    requests: int
    errors: int


class RequestLog:
    """Completions served, per tenant, and the feedback on them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, completions: Sequence[LoggedCompletion]) -> None:
        """Log finished completions in one transaction, without their text where the tenant logs none."""
        with self.db.session() as session:
            keeps_text: dict[str, bool] = {}
            for completion in completions:
                tenant_id = completion.tenant_id
                if tenant_id not in keeps_text:
                    keeps_text[tenant_id] = session.get_one(Tenant, tenant_id).log_text
                if keeps_text[tenant_id]:
                    _make_storable(completion)
                else:
                    completion.prompt = completion.messages = completion.text = None
                session.add(completion)

    def get(self, tenant_id: str, completion_id: str) -> LoggedCompletion:
        """The tenant's logged completion with that id; `NotFoundError` for an unknown or foreign one."""
        _known_id(completion_id, "completion")
        with self.db.session() as session:
            return owned(session, LoggedCompletion, completion_id, tenant_id, what="completion")

    def add_feedback(
        self,
        tenant_id: str,
        completion_id: str,
        *,
        score: float | None = None,
        label: str | None = None,
        correction: str | None = None,
        key_id: str | None = None,
    ) -> Feedback:
        """Record feedback on one of the tenant's completions: at least one of score, label, correction."""
        if score is None and label is None and correction is None:
            raise ConfigError("feedback needs at least one of score, label or correction (got none)")
        if score is not None and not (math.isfinite(score) and 0.0 <= score <= 1.0):
            raise ConfigError(f"score must be a number from 0 to 1 (got {score!r})", field="score")
        for field, value in (("label", label), ("correction", correction)):
            if value is not None and NUL in value:
                raise ConfigError(f"{field} contains a NUL character (\\u0000); remove it", field=field)
        _known_id(completion_id, "completion")
        with self.db.session() as session:
            owned(session, LoggedCompletion, completion_id, tenant_id, what="completion")
            feedback = Feedback(
                tenant_id=tenant_id,
                completion_id=completion_id,
                score=score,
                label=label,
                correction=correction,
                key_id=key_id,
            )
            session.add(feedback)
        return feedback

    def feedback(
        self, tenant_id: str, *, completion_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[Feedback], bool]:
        """The tenant's feedback, oldest first, after the feedback `after` (a page of `limit`), and whether
        more follows; only that on `completion_id` when given."""
        query = select(Feedback).where(Feedback.tenant_id == tenant_id)
        if completion_id is not None and NUL in completion_id:
            return [], False
        if after is not None:
            _known_id(after, "feedback")
        with self.db.session() as session:
            if completion_id is not None:
                query = query.where(Feedback.completion_id == completion_id)
            if after is not None:
                last = owned(session, Feedback, after, tenant_id, what="feedback")
                query = query.where(
                    or_(
                        Feedback.created_at > last.created_at,
                        and_(Feedback.created_at == last.created_at, Feedback.id > last.id),
                    )
                )
            rows = list(session.scalars(query.order_by(Feedback.created_at, Feedback.id).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def corrections(
        self, tenant_id: str, *, adapter: str | None = None, version_id: str | None = None
    ) -> list[tuple[LoggedCompletion, str]]:
        """(completion, its latest correction) for each of the tenant's completions whose text was logged
        and that has a correction, oldest completion first; only those served by a version of `adapter`
        when given (`NotFoundError` if the tenant has no such adapter), or by the version `version_id`."""
        latest = (
            select(Feedback.completion_id, func.max(Feedback.created_at).label("at"))
            .where(Feedback.tenant_id == tenant_id, Feedback.correction.is_not(None))
            .group_by(Feedback.completion_id)
            .subquery()
        )
        query = (
            select(LoggedCompletion, Feedback)
            .join(latest, latest.c.completion_id == LoggedCompletion.id)
            .join(
                Feedback,
                and_(
                    Feedback.completion_id == latest.c.completion_id,
                    Feedback.created_at == latest.c.at,
                    Feedback.correction.is_not(None),
                ),
            )
            .where(
                LoggedCompletion.tenant_id == tenant_id,
                or_(LoggedCompletion.prompt.is_not(None), LoggedCompletion.messages.is_not(None)),
            )
            .order_by(LoggedCompletion.created_at, LoggedCompletion.id, Feedback.id)
        )
        with self.db.session() as session:
            if adapter is not None:
                _known_id(adapter, "adapter")
                found = session.scalar(
                    select(Adapter.id).where(Adapter.tenant_id == tenant_id, Adapter.name == adapter)
                )
                if found is None:
                    raise NotFoundError(f"no adapter {adapter!r}")
                versions = select(AdapterVersion.id).where(AdapterVersion.adapter_id == found)
                query = query.where(LoggedCompletion.adapter_version_id.in_(versions))
            if version_id is not None:
                query = query.where(LoggedCompletion.adapter_version_id == version_id)
            pairs: dict[str, tuple[LoggedCompletion, str]] = {}
            for completion, feedback in session.execute(query).tuples():
                pairs[completion.id] = (completion, feedback.correction or "")  # one per completion
        return list(pairs.values())

    # --- what the adaptation controller reads: a version's traffic and its scores over a span of time -------

    def served(
        self, tenant_id: str, version_id: str, *, after: float, until: float, limit: int = 10_000
    ) -> list[LoggedCompletion]:
        """The completions version `version_id` served, logged in (`after`, `until`], oldest first."""
        query = (
            select(LoggedCompletion)
            .where(
                LoggedCompletion.tenant_id == tenant_id,
                LoggedCompletion.adapter_version_id == version_id,
                LoggedCompletion.created_at > after,
                LoggedCompletion.created_at <= until,
            )
            .order_by(LoggedCompletion.created_at, LoggedCompletion.id)
            .limit(limit)
        )
        with self.db.session() as session:
            return list(session.scalars(query))

    def scores(self, tenant_id: str, version_id: str, *, after: float, until: float) -> list[float]:
        """The feedback scores given in (`after`, `until`] on completions version `version_id` served."""
        given = (Feedback.created_at > after, Feedback.created_at <= until)
        with self.db.session() as session:
            return _scores(session, tenant_id, version_id, *given)

    def window(self, tenant_id: str, version_id: str, *, since: float) -> ServedWindow:
        """Version `version_id`'s traffic since `since`: the scores given on completions it served then,
        how many it served, how many of those failed."""
        counts = (
            select(func.count(), func.count().filter(LoggedCompletion.finish_reason == "error"))
            .select_from(LoggedCompletion)
            .where(
                LoggedCompletion.tenant_id == tenant_id,
                LoggedCompletion.adapter_version_id == version_id,
                LoggedCompletion.created_at >= since,
            )
        )
        with self.db.session() as session:
            requests, errors = session.execute(counts).one()
            values = _scores(session, tenant_id, version_id, LoggedCompletion.created_at >= since)
        return ServedWindow(scores=values, requests=int(requests), errors=int(errors))

    def prune(self, before: float) -> int:
        """Delete the completions logged before `before` (UNIX seconds) and their feedback; how many."""
        old = select(LoggedCompletion.id).where(LoggedCompletion.created_at < before)
        with self.db.session() as session:
            session.execute(delete(Feedback).where(Feedback.completion_id.in_(old)))
            deleted = session.execute(delete(LoggedCompletion).where(LoggedCompletion.created_at < before))
        return int(getattr(deleted, "rowcount", 0) or 0)


def _scores(session: Session, tenant_id: str, version_id: str, *where: ColumnElement[bool]) -> list[float]:
    """The feedback scores on the completions `version_id` served, under the conditions `where`, in order."""
    query = (
        select(Feedback.score)
        .join(LoggedCompletion, LoggedCompletion.id == Feedback.completion_id)
        .where(
            Feedback.tenant_id == tenant_id,
            Feedback.score.is_not(None),
            LoggedCompletion.adapter_version_id == version_id,
            *where,
        )
        .order_by(Feedback.created_at, Feedback.id)
    )
    return [float(score) for score in session.scalars(query) if score is not None]


def _known_id(value: str, what: str) -> None:
    """`NotFoundError` for an id that no row can have (one with a NUL character, which PostgreSQL refuses)."""
    if NUL in value:
        raise NotFoundError(f"no {what} {value!r}")


def _make_storable(completion: LoggedCompletion) -> None:
    """Replace each NUL character of the completion's text by U+FFFD, so every database stores it."""

    def storable(text: str | None) -> str | None:
        return None if text is None else text.replace(NUL, "\ufffd")

    completion.prompt = storable(completion.prompt)
    completion.text = storable(completion.text)
    if completion.messages is not None:
        completion.messages = [
            {key: storable(value) or "" for key, value in message.items()} for message in completion.messages
        ]
