"""Adapters, their immutable numbered versions, and aliases that point at versions.

A version is registered in two moves: its directory is stored as an artifact (all or nothing, see
`artifacts`), then one transaction adds the version row (and, for a job, marks the job succeeded).
If that transaction fails the artifact is deleted, so no row ever names a half-written artifact and
no artifact outlives a failed registration.

Aliases (`production`, `staging`, any name) move with `promote`; every move is kept in
`alias_moves`. `rollback` undoes the newest promote not yet undone, so rolling back twice after
promoting v1, v2, v3 lands on v1.

Besides its alias moves, an adapter keeps an audited history of events (`record_event`, `events`):
canaries and experiments set and cleared (`registry.routing`), and whatever a controller records
(triggers, jobs, gates, promotions). Deleting an adapter deletes its events and every canary or
experiment that names it; a version a canary or experiment targets by number cannot be deleted.

When the adapter has a gate policy (`registry.evaluation`), `promote` checks the version against it
first: a failing version is refused (`GateRefusedError`, carrying the report) unless `force` is given;
the report goes in the move either way, and a forced move is marked `forced`. `rollback` is not gated:
it restores a version that was promoted before (and passed, or was forced past, the gate then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lorafleet.errors import ConflictError, GateRefusedError, NotFoundError, UnknownAdapterError
from lorafleet.evaluation.gate import summary
from lorafleet.home import validate_name
from lorafleet.registry.adapter_events import add_event, events_of
from lorafleet.registry.artifacts import ArtifactStore, directory_bytes, directory_sha256
from lorafleet.registry.database import Database
from lorafleet.registry.lineage import chain, gate_report, label
from lorafleet.registry.splits import drop_splits_naming, splits_targeting
from lorafleet.registry.tables import (
    AdaptationPolicyRow,
    Adapter,
    AdapterEvent,
    AdapterVersion,
    Alias,
    AliasMove,
    EvalSuite,
    Rollout,
    Tenant,
    new_id,
    now,
    owned,
)
from lorafleet.registry.usage import check_storage, lock_tenant, record_usage

DEFAULT_ALIAS = "production"


class Adapters:
    """A tenant's adapters, versions and aliases."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    # --- versions ---------------------------------------------------------------------------------------

    def register(
        self,
        tenant_id: str,
        name: str,
        source: Path,
        *,
        base_model: str,
        dataset_id: str | None = None,
        job_id: str | None = None,
        parent_version_id: str | None = None,
        metrics: dict[str, Any] | None = None,
        in_same_transaction: Callable[[Session, AdapterVersion], None] | None = None,
    ) -> AdapterVersion:
        """Store the adapter directory `source` as the next version of `name` and return the version.

        `in_same_transaction(session, version)` runs inside the transaction that adds the row; if it
        raises, nothing is registered and the artifact is removed.
        """
        validate_name(name, what="adapter name")
        size = directory_bytes(source)
        with self.db.session() as session:
            tenant = session.get_one(Tenant, tenant_id)
            exists = session.scalar(
                select(Adapter.id).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
            )
            check_storage(session, tenant, new_bytes=size, new_adapter=exists is None)
        version_id = new_id("av")
        digest = directory_sha256(source)
        url = self.artifacts.put_directory(source, f"tenants/{tenant_id}/adapters/{name}/{version_id}")
        try:
            with self.db.session() as session:
                check_storage(
                    session, lock_tenant(session, tenant_id), new_bytes=size, new_adapter=exists is None
                )
                adapter = self._adapter(session, tenant_id, name, create=True)
                adapter.latest_version += 1
                version = AdapterVersion(
                    id=version_id,
                    adapter_id=adapter.id,
                    tenant_id=tenant_id,
                    number=adapter.latest_version,
                    artifact=url,
                    sha256=digest,
                    bytes=size,
                    base_model=base_model,
                    dataset_id=dataset_id,
                    job_id=job_id,
                    parent_version_id=parent_version_id,
                    metrics=metrics or {},
                )
                session.add(version)
                record_usage(session, tenant_id, "storage", storage_bytes=size, model=name, job_id=job_id)
                if in_same_transaction is not None:
                    session.flush()
                    in_same_transaction(session, version)
        except BaseException:
            self.artifacts.delete(url)
            raise
        return version

    def all(self, tenant_id: str, *, after: str | None = None, limit: int | None = None) -> list[Adapter]:
        """The tenant's adapters by name, a page at a time: those named after `after`, at most `limit`."""
        query = select(Adapter).where(Adapter.tenant_id == tenant_id)
        if after is not None:
            query = query.where(Adapter.name > after)
        with self.db.session() as session:
            return list(session.scalars(query.order_by(Adapter.name).limit(limit)))

    def aliases_of(self, tenant_id: str, adapter_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Adapter id → its aliases (alias name → version number), for a page of adapters in one query."""
        found: dict[str, dict[str, int]] = {adapter_id: {} for adapter_id in adapter_ids}
        with self.db.session() as session:
            rows = session.execute(
                select(Alias.adapter_id, Alias.name, AdapterVersion.number)
                .join(AdapterVersion, Alias.version_id == AdapterVersion.id)
                .where(Alias.tenant_id == tenant_id, Alias.adapter_id.in_(list(adapter_ids)))
                .order_by(Alias.name)
            ).all()
        for adapter_id, alias, number in rows:
            found[adapter_id][alias] = number
        return found

    def get(self, tenant_id: str, name: str) -> Adapter:
        with self.db.session() as session:
            return self._adapter(session, tenant_id, name)

    def versions(
        self, tenant_id: str, name: str, *, after: int | None = None, limit: int | None = None
    ) -> list[AdapterVersion]:
        """The adapter's versions, oldest first, a page at a time: those numbered after `after`, at most
        `limit`."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            query = select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
            if after is not None:
                query = query.where(AdapterVersion.number > after)
            return list(session.scalars(query.order_by(AdapterVersion.number).limit(limit)))

    def version(self, tenant_id: str, name: str, number: int | str) -> AdapterVersion:
        """Version `number` of `name` (`3` or `v3`); `UnknownAdapterError` naming the known ones."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            return self._version(session, adapter, number)

    def by_id(self, tenant_id: str, version_id: str) -> AdapterVersion:
        with self.db.session() as session:
            return owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")

    def resolve(
        self, tenant_id: str, name: str, *, version: str | None = None, alias: str | None = None
    ) -> AdapterVersion:
        """The version meant by `name@version`, `name:alias`, or `name` (production, else latest)."""
        with self.db.session() as session:
            return self._resolve(session, tenant_id, name, version=version, alias=alias)

    def reference(self, tenant_id: str, version_id: str) -> str:
        """`name@number` of the version `version_id`; `NotFoundError` if the tenant has no such version."""
        with self.db.session() as session:
            return label(
                session, owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")
            )

    def lineage_chain(self, tenant_id: str, version_id: str) -> list[AdapterVersion]:
        """The version `version_id` and its ancestors (parent, parent's parent, …), oldest first."""
        with self.db.session() as session:
            return chain(
                session, owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")
            )

    def local_path(self, version: AdapterVersion) -> Path:
        return self.artifacts.local_path(version.artifact)

    # --- the Fisher EWC estimates on a version's rows: computed by the first EWC child, kept for the rest --

    def stored_fisher(self, version: AdapterVersion) -> Path | None:
        """A local copy of the Fisher stored with `version`, or None when none is."""
        try:
            return self.artifacts.local_path(self.artifacts.url_for(_fisher_key(version)))
        except NotFoundError:
            return None

    def store_fisher(self, version: AdapterVersion, path: Path) -> None:
        """Keep `path` (a `fisher.safetensors` estimated on the version's rows) with `version`. The version's
        own artifact is not touched: its digest and downloads stay as they were."""
        self.artifacts.put_file(path, _fisher_key(version))

    def delete_version(self, tenant_id: str, name: str, number: int | str) -> AdapterVersion:
        """Delete one version; `ConflictError` while an alias points at it or a split targets it."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            version = self._version(session, adapter, number)
            pointing = session.scalars(select(Alias.name).where(Alias.version_id == version.id)).all()
            if pointing:
                raise ConflictError(
                    f"{name}@{version.number} is the target of alias {', '.join(pointing)}; "
                    "promote another version or roll back first"
                )
            splits = splits_targeting(session, tenant_id, name, version.number)
            if splits:
                raise ConflictError(
                    f"{name}@{version.number} is the target of {', '.join(splits)}; change or clear it first"
                )
            session.delete(version)
            record_usage(session, tenant_id, "storage", storage_bytes=-version.bytes, model=name)
        self._delete_artifacts(version)
        return version

    def delete(self, tenant_id: str, name: str, *, actor: str = "system") -> Adapter:
        """Delete an adapter with all its versions, aliases, events and their history, and the canaries
        and experiments that name it (each recorded as cleared, by `actor`, on the adapter it split)."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            versions = session.scalars(
                select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
            ).all()
            drop_splits_naming(session, tenant_id, name, actor=actor)
            for table in (Alias, AliasMove, EvalSuite, AdapterEvent, AdaptationPolicyRow, Rollout):
                for row in session.scalars(select(table).where(table.adapter_id == adapter.id)):
                    session.delete(row)
            session.flush()
            for version in versions:
                session.delete(version)
                record_usage(session, tenant_id, "storage", storage_bytes=-version.bytes, model=name)
            session.flush()
            session.delete(adapter)
        for version in versions:
            self._delete_artifacts(version)
        return adapter

    def _delete_artifacts(self, version: AdapterVersion) -> None:
        self.artifacts.delete(version.artifact)
        self.artifacts.delete(self.artifacts.url_for(_fisher_key(version)))

    # --- events ------------------------------------------------------------------------------------------

    def record_event(
        self,
        tenant_id: str,
        name: str,
        kind: str,
        *,
        actor: str,
        detail: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> AdapterEvent:
        """Add an event (`kind`: a short word such as `job_started`) to the adapter's audited history."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            return add_event(session, adapter, kind, actor=actor, detail=detail, job_id=job_id)

    def events(self, tenant_id: str, name: str, *, since_id: int | None = None) -> list[AdapterEvent]:
        """The adapter's events after the event `since_id` (all when None), oldest first."""
        with self.db.session() as session:
            return events_of(session, self._adapter(session, tenant_id, name), since_id=since_id)

    # --- aliases ----------------------------------------------------------------------------------------

    def aliases(self, tenant_id: str, name: str) -> dict[str, int]:
        """Alias name → version number."""
        with self.db.session() as session:
            return self._aliases(session, self._adapter(session, tenant_id, name))

    def promote(
        self, tenant_id: str, name: str, alias: str, number: int | str, *, actor: str, force: bool = False
    ) -> AdapterVersion:
        """Point `alias` at version `number` (creating the alias), and record the move.

        Under a gate policy a failing version raises `GateRefusedError` (nothing moves) unless `force`.
        """
        validate_name(alias, what="alias")
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            version = self._version(session, adapter, number)
            report = gate_report(session, adapter, version)
            forced = report is not None and not report["passed"]
            if forced and not force:
                assert report is not None
                raise GateRefusedError(
                    f"{summary(report)}; pass force=true (CLI: --force) to promote anyway",
                    report=report,
                )
            row = self._alias(session, adapter, alias)
            self._move(
                session,
                adapter,
                alias,
                row,
                version.id,
                action="promote",
                actor=actor,
                forced=forced,
                report=report,
            )
        return version

    def rollback(self, tenant_id: str, name: str, alias: str, *, actor: str) -> AdapterVersion:
        """Move `alias` back to where it pointed before its newest promote not yet rolled back."""
        with self.db.session() as session:
            adapter = self._adapter(session, tenant_id, name)
            row = self._alias(session, adapter, alias)
            if row is None:
                raise NotFoundError(f"adapter {name!r} has no alias {alias!r}")
            earlier: list[str | None] = []  # the version before each promote still in effect
            for move in self._moves(session, adapter, alias):
                if move.action == "promote":
                    earlier.append(move.from_version_id)
                elif move.action == "rollback" and earlier:
                    earlier.pop()
            target = earlier[-1] if earlier else None
            if target is None or session.get(AdapterVersion, target) is None:
                raise ConflictError(f"alias {name}:{alias} has no earlier version to roll back to")
            self._move(session, adapter, alias, row, target, action="rollback", actor=actor)
            return session.get_one(AdapterVersion, target)

    def history(self, tenant_id: str, name: str, alias: str | None = None) -> list[AliasMove]:
        """Every alias move of `name` (or of one alias), oldest first."""
        with self.db.session() as session:
            return self._moves(session, self._adapter(session, tenant_id, name), alias)

    # --- queries inside a session ----------------------------------------------------------------------

    @staticmethod
    def _adapter(session: Session, tenant_id: str, name: str, *, create: bool = False) -> Adapter:
        """The tenant's adapter `name`; with `create`, made if missing and locked for a new version number."""
        query = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
        if create:  # two registrations at once: one creates the row, both then number versions in turn
            query = query.with_for_update()
            if session.scalar(query) is None:
                try:
                    with session.begin_nested():
                        session.add(Adapter(tenant_id=tenant_id, name=name))
                except IntegrityError:
                    pass  # another transaction created it first
        adapter = session.scalar(query)
        if adapter is None:
            raise UnknownAdapterError(f"no adapter {name!r}")
        return adapter

    @classmethod
    def _resolve(
        cls, session: Session, tenant_id: str, name: str, *, version: str | None, alias: str | None
    ) -> AdapterVersion:
        """`resolve` inside `session`."""
        adapter = cls._adapter(session, tenant_id, name)
        if version is not None:
            return cls._version(session, adapter, version)
        row = cls._alias(session, adapter, alias or DEFAULT_ALIAS)
        if row is not None:
            return session.get_one(AdapterVersion, row.version_id)
        if alias is not None:
            known = ", ".join(cls._aliases(session, adapter)) or "none"
            raise UnknownAdapterError(f"adapter {name!r} has no alias {alias!r} (aliases: {known})")
        newest = session.scalar(
            select(AdapterVersion)
            .where(AdapterVersion.adapter_id == adapter.id)
            .order_by(AdapterVersion.number.desc())
            .limit(1)
        )
        if newest is None:
            raise UnknownAdapterError(f"adapter {name!r} has no versions")
        return newest

    @staticmethod
    def _version(session: Session, adapter: Adapter, number: int | str) -> AdapterVersion:
        text = str(number).removeprefix("v")
        version = (
            session.scalar(
                select(AdapterVersion).where(
                    AdapterVersion.adapter_id == adapter.id, AdapterVersion.number == int(text)
                )
            )
            if text.isascii() and text.isdigit() and len(text) <= 9
            else None
        )
        if version is None:
            numbers = session.scalars(
                select(AdapterVersion.number)
                .where(AdapterVersion.adapter_id == adapter.id)
                .order_by(AdapterVersion.number)
            ).all()
            known = ", ".join(map(str, numbers)) or "none"
            raise UnknownAdapterError(
                f"adapter {adapter.name!r} has no version {number!r} (versions: {known})"
            )
        return version

    @staticmethod
    def _alias(session: Session, adapter: Adapter, alias: str) -> Alias | None:
        return session.scalar(select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias))

    @staticmethod
    def _aliases(session: Session, adapter: Adapter) -> dict[str, int]:
        rows = session.execute(
            select(Alias.name, AdapterVersion.number)
            .join(AdapterVersion, Alias.version_id == AdapterVersion.id)
            .where(Alias.adapter_id == adapter.id)
            .order_by(Alias.name)
        ).all()
        return {alias: number for alias, number in rows}

    @staticmethod
    def _moves(session: Session, adapter: Adapter, alias: str | None) -> list[AliasMove]:
        query = select(AliasMove).where(AliasMove.adapter_id == adapter.id)
        if alias is not None:
            query = query.where(AliasMove.alias == alias)
        return list(session.scalars(query.order_by(AliasMove.id)))

    @staticmethod
    def _move(
        session: Session,
        adapter: Adapter,
        alias: str,
        row: Alias | None,
        version_id: str,
        *,
        action: str,
        actor: str,
        forced: bool = False,
        report: dict[str, Any] | None = None,
    ) -> None:
        """Point `alias` (its `row`, None if new) at `version_id` and record the move in the audit trail."""
        session.add(
            AliasMove(
                adapter_id=adapter.id,
                tenant_id=adapter.tenant_id,
                alias=alias,
                from_version_id=row.version_id if row is not None else None,
                to_version_id=version_id,
                action=action,
                actor=actor,
                forced=forced,
                report=report,
            )
        )
        if row is None:
            session.add(
                Alias(adapter_id=adapter.id, tenant_id=adapter.tenant_id, name=alias, version_id=version_id)
            )
        else:
            row.version_id = version_id
            row.updated_at = now()


def _fisher_key(version: AdapterVersion) -> str:
    return f"tenants/{version.tenant_id}/fisher/{version.id}.safetensors"
