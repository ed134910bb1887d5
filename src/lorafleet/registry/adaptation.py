"""Adaptation policies on a tenant's aliases, and the rollouts the controller runs under them.

A policy (`rollout.policy.AdaptationPolicy`, stored as JSON) watches one alias of one adapter; setting,
replacing or removing it is an event in the adapter's history. The controller (`rollout.controller`)
reads every policy, writes what it last saw of the alias into the policy's `status`, and keeps each pass
of its loop in a `Rollout` row whose `state` it moves along: at most one rollout per alias is active
(waiting, training or canary) at a time, so a restarted controller finds the one it was running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.errors import ConflictError, NotFoundError
from lorafleet.home import validate_name
from lorafleet.registry.adapter_events import add_event
from lorafleet.registry.adapters import Adapters
from lorafleet.registry.database import Database
from lorafleet.registry.tables import (
    ROLLOUT_ACTIVE,
    AdaptationPolicyRow,
    Adapter,
    Rollout,
    now,
    owned,
)
from lorafleet.rollout.policy import AdaptationPolicy


@dataclass(frozen=True)
class WatchedAlias:
    """One policy as the controller reads it: whose alias, and the policy itself."""

    policy_id: int
    tenant_id: str
    adapter_id: str
    adapter: str  # the adapter's name
    alias: str
    policy: AdaptationPolicy
    status: dict[str, Any] | None  # what the controller saw last


class Adaptation:
    """A tenant's adaptation policies and rollouts (module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- policies ---------------------------------------------------------------------------------------

    def set_policy(self, tenant_id: str, name: str, policy: AdaptationPolicy, *, actor: str) -> None:
        """Set (or replace) the policy on alias `policy.alias` of adapter `name`; audited."""
        validate_name(policy.alias, what="policy.alias")
        spec = policy.model_dump(mode="json", exclude_unset=True)  # what was set: it validates again
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            row = self._policy(session, adapter, policy.alias)
            if row is None:
                session.add(
                    AdaptationPolicyRow(
                        tenant_id=tenant_id, adapter_id=adapter.id, alias=policy.alias, spec=spec, actor=actor
                    )
                )
            else:
                row.spec, row.actor, row.updated_at = spec, actor, now()
            add_event(session, adapter, "policy_set", actor=actor, detail=spec)

    def policies(self, tenant_id: str, name: str) -> list[AdaptationPolicyRow]:
        """The adapter's policies, one per watched alias, by alias."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            query = select(AdaptationPolicyRow).where(AdaptationPolicyRow.adapter_id == adapter.id)
            return list(session.scalars(query.order_by(AdaptationPolicyRow.alias)))

    def policy(self, tenant_id: str, name: str, alias: str) -> AdaptationPolicyRow:
        """The policy on `alias` of adapter `name`; `NotFoundError` if none."""
        with self.db.session() as session:
            row = self._policy(session, Adapters._adapter(session, tenant_id, name), alias)
            if row is None:
                raise NotFoundError(f"adapter {name!r} has no adaptation policy on alias {alias!r}")
            return row

    def clear_policy(self, tenant_id: str, name: str, alias: str, *, actor: str) -> AdaptationPolicyRow:
        """Remove the policy on `alias`; `ConflictError` while a rollout under it is under way."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            row = self._policy(session, adapter, alias)
            if row is None:
                raise NotFoundError(f"adapter {name!r} has no adaptation policy on alias {alias!r}")
            active = self._active(session, adapter.id, alias)
            if active is not None:
                raise ConflictError(
                    f"rollout {active.id} on {name}:{alias} is {active.state}; wait for it to end "
                    "(or cancel its job) before removing the policy"
                )
            session.delete(row)
            add_event(session, adapter, "policy_cleared", actor=actor, detail={"alias": alias})
        return row

    def watched(self, tenant_id: str | None = None) -> list[WatchedAlias]:
        """Every tenant's policies, for the controller (and `/metrics`); or one tenant's (its dashboard)."""
        query = select(AdaptationPolicyRow, Adapter.name).join(
            Adapter, Adapter.id == AdaptationPolicyRow.adapter_id
        )
        if tenant_id is not None:
            query = query.where(AdaptationPolicyRow.tenant_id == tenant_id)
        with self.db.session() as session:
            rows = session.execute(query.order_by(AdaptationPolicyRow.id)).tuples()
            return [
                WatchedAlias(
                    policy_id=row.id,
                    tenant_id=row.tenant_id,
                    adapter_id=row.adapter_id,
                    adapter=name,
                    alias=row.alias,
                    policy=AdaptationPolicy.model_validate(row.spec),
                    status=row.status,
                )
                for row, name in rows
            ]

    def set_status(self, policy_id: int, status: dict[str, Any]) -> None:
        """Keep what the controller saw of the alias just now (its monitor, the rollout under way)."""
        with self.db.session() as session:
            row = session.get(AdaptationPolicyRow, policy_id)
            if row is not None:  # removed meanwhile: nothing to report on
                row.status, row.status_at = status, now()

    # --- rollouts ---------------------------------------------------------------------------------------

    def rollouts(self, tenant_id: str, name: str, *, limit: int = 20) -> list[Rollout]:
        """The adapter's rollouts, newest first."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            query = select(Rollout).where(Rollout.adapter_id == adapter.id)
            return list(session.scalars(query.order_by(Rollout.created_at.desc(), Rollout.id).limit(limit)))

    def rollout(self, tenant_id: str, rollout_id: str) -> Rollout:
        with self.db.session() as session:
            return owned(session, Rollout, rollout_id, tenant_id, what="rollout")

    def active(self, watched: WatchedAlias) -> Rollout | None:
        """The rollout under way on the watched alias, if any."""
        with self.db.session() as session:
            return self._active(session, watched.adapter_id, watched.alias)

    def start(
        self,
        watched: WatchedAlias,
        *,
        trigger: dict[str, Any],
        from_version_id: str,
        state: str = "waiting",
        **fields: Any,
    ) -> Rollout:
        """A new rollout on the alias in `state` (waiting for corrections; or canary, for a canary set by
        hand, with `fields` naming it); `ConflictError` if one is under way."""
        with self.db.session() as session:
            if self._active(session, watched.adapter_id, watched.alias) is not None:
                raise ConflictError(f"a rollout on {watched.adapter}:{watched.alias} is under way")
            rollout = Rollout(
                tenant_id=watched.tenant_id,
                adapter_id=watched.adapter_id,
                alias=watched.alias,
                state=state,
                trigger=trigger,
                from_version_id=from_version_id,
                **fields,
            )
            session.add(rollout)
            session.flush()
            adapter = session.get_one(Adapter, watched.adapter_id)
            add_event(
                session, adapter, "triggered", actor=CONTROLLER, detail={"rollout": rollout.id, **trigger}
            )
        return rollout

    def advance(
        self,
        rollout: Rollout,
        state: str,
        *,
        event: str,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Rollout:
        """Move `rollout` to `state` (setting `fields` on it) and record `event` in the adapter's history, in
        one transaction; a finished state also stamps `finished_at`."""
        with self.db.session() as session:
            row = session.get_one(Rollout, rollout.id)
            row.state, row.updated_at = state, now()
            for field, value in fields.items():
                setattr(row, field, value)
            if state not in ROLLOUT_ACTIVE:
                row.finished_at = row.updated_at
            adapter = session.get_one(Adapter, row.adapter_id)
            add_event(
                session,
                adapter,
                event,
                actor=CONTROLLER,
                job_id=row.job_id,
                detail={"rollout": row.id, **(detail or {})},
            )
        return row

    # --- queries inside a session ----------------------------------------------------------------------

    @staticmethod
    def _policy(session: Session, adapter: Adapter, alias: str) -> AdaptationPolicyRow | None:
        return session.scalar(
            select(AdaptationPolicyRow).where(
                AdaptationPolicyRow.adapter_id == adapter.id, AdaptationPolicyRow.alias == alias
            )
        )

    @staticmethod
    def _active(session: Session, adapter_id: str, alias: str) -> Rollout | None:
        return session.scalar(
            select(Rollout).where(
                Rollout.adapter_id == adapter_id, Rollout.alias == alias, Rollout.state.in_(ROLLOUT_ACTIVE)
            )
        )


CONTROLLER = "controller"  # the actor of everything the controller does
