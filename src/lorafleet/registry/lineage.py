"""Queries inside a session about a version's lineage: its chain of ancestors, their suites, its gate report.

The chain of a version is itself, its parent (`parent_version_id`), the parent's parent, …, oldest first.
Ancestors may be versions of the same adapter (continual training) or of another one of the tenant. The
walk stops at a parent that no longer exists or belongs to another tenant, and never loops.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.evaluation.forgetting import ScoredVersion
from lorafleet.evaluation.gate import GatePolicy, check_gate
from lorafleet.registry.tables import Adapter, AdapterVersion, EvalSuite


def chain(session: Session, version: AdapterVersion) -> list[AdapterVersion]:
    """`version` and its ancestors, oldest first."""
    found = [version]
    seen = {version.id}
    parent_id = version.parent_version_id
    while parent_id is not None and parent_id not in seen:
        parent = session.get(AdapterVersion, parent_id)
        if parent is None or parent.tenant_id != version.tenant_id:
            break
        found.append(parent)
        seen.add(parent.id)
        parent_id = parent.parent_version_id
    return found[::-1]


def label(session: Session, version: AdapterVersion) -> str:
    """`name@number` of a version."""
    return f"{session.get_one(Adapter, version.adapter_id).name}@{version.number}"


def scored_chain(session: Session, version: AdapterVersion) -> list[ScoredVersion]:
    """The chain as `evaluation.forgetting` takes it: labels and metrics."""
    return [ScoredVersion(label(session, v), v.metrics or {}) for v in chain(session, version)]


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
