"""Queries inside a session about a version's lineage: its chain of ancestors, their suites, its gate report.

The chain of a version is itself, its parent (`parent_version_id`), the parent's parent, …, oldest first.
Ancestors may be versions of the same adapter (continual training) or of another one of the tenant. The
walk stops at a parent that no longer exists or belongs to another tenant, and never loops.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.orm import Session, aliased

from lorafleet.evaluation.forgetting import ScoredVersion
from lorafleet.evaluation.gate import GatePolicy, check_gate
from lorafleet.registry.tables import Adapter, AdapterVersion, EvalSuite

MAX_DEPTH = 100_000  # ancestors walked at most (a guard: parents always precede their children)


def chain(session: Session, version: AdapterVersion) -> list[AdapterVersion]:
    """`version` and its ancestors, oldest first: one recursive query, however long the lineage."""
    step = aliased(AdapterVersion)
    ancestors = (
        select(AdapterVersion.id, AdapterVersion.parent_version_id, literal(1).label("depth"))
        .where(AdapterVersion.id == version.parent_version_id, AdapterVersion.tenant_id == version.tenant_id)
        .cte("ancestors", recursive=True)
    )
    ancestors = ancestors.union_all(
        select(step.id, step.parent_version_id, ancestors.c.depth + 1)
        .join(ancestors, step.id == ancestors.c.parent_version_id)
        .where(step.tenant_id == version.tenant_id, ancestors.c.depth < MAX_DEPTH)
    )
    rows = session.scalars(
        select(AdapterVersion)
        .join(ancestors, AdapterVersion.id == ancestors.c.id)
        .order_by(ancestors.c.depth)
    )
    found, seen = [version], {version.id}
    for parent in rows:  # nearest first; a (corrupt) loop in the parents ends the walk where it closes
        if parent.id in seen:
            break
        found.append(parent)
        seen.add(parent.id)
    return found[::-1]


def label(session: Session, version: AdapterVersion) -> str:
    """`name@number` of a version."""
    return f"{session.get_one(Adapter, version.adapter_id).name}@{version.number}"


def labels(session: Session, versions: list[AdapterVersion]) -> list[str]:
    """`name@number` of each version, their adapters' names read in one query."""
    ids = {v.adapter_id for v in versions}
    names = dict(session.execute(select(Adapter.id, Adapter.name).where(Adapter.id.in_(ids))).tuples().all())
    return [f"{names[v.adapter_id]}@{v.number}" for v in versions]


def scored_chain(session: Session, version: AdapterVersion) -> list[ScoredVersion]:
    """The chain as `evaluation.forgetting` takes it: labels and metrics."""
    versions = chain(session, version)
    return [
        ScoredVersion(name, v.metrics or {})
        for name, v in zip(labels(session, versions), versions, strict=True)
    ]


def suites_of(session: Session, adapter_ids: list[str]) -> list[EvalSuite]:
    """The suites registered for these adapters, oldest first."""
    if not adapter_ids:
        return []
    query = select(EvalSuite).where(EvalSuite.adapter_id.in_(adapter_ids))
    return list(session.scalars(query.order_by(EvalSuite.created_at, EvalSuite.id)))


def suites_of_lineage(
    session: Session, adapter_id: str | None, parent: AdapterVersion | None
) -> list[EvalSuite]:
    """The suites a new version of adapter `adapter_id` (None: not created yet) trained from `parent` is
    scored on: its own adapter's and those of every adapter in the parent's chain."""
    ids = [adapter_id] if adapter_id is not None else []
    for ancestor in chain(session, parent) if parent is not None else []:
        if ancestor.adapter_id not in ids:
            ids.append(ancestor.adapter_id)
    return suites_of(session, ids)


def gate_report(session: Session, adapter: Adapter, version: AdapterVersion) -> dict[str, Any] | None:
    """The gate report of `version` under its adapter's policy; None when the adapter has no policy."""
    if adapter.gate_policy is None:
        return None
    policy = GatePolicy.model_validate(adapter.gate_policy)
    own = [suite.id for suite in suites_of(session, [adapter.id])]
    return check_gate(policy, scored_chain(session, version), own)
