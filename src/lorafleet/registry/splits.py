"""The `route_splits` rows inside a session: a tenant's canaries and experiments as the router's models.

`registry.routing` sets, clears and reads them; `registry.adapters` asks which splits a version
deletion would break (`splits_targeting`) and drops those naming an adapter it deletes
(`drop_splits_naming`). References here were checked when the split was set, so they parse.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.registry.adapter_events import add_event
from lorafleet.registry.tables import Adapter, RouteSplit
from lorafleet.serving.router import AdapterRef, Canary, Experiment, parse_reference

CANARY = "canary"
EXPERIMENT = "experiment"


def split_spec(row: RouteSplit) -> Canary | Experiment:
    """The stored split as the router's model."""
    return Canary.model_validate(row.spec) if row.kind == CANARY else Experiment.model_validate(row.spec)


def split_rows(session: Session, tenant_id: str, kind: str | None = None) -> list[RouteSplit]:
    """The tenant's splits (of one kind, if given), oldest first."""
    query = select(RouteSplit).where(RouteSplit.tenant_id == tenant_id)
    if kind is not None:
        query = query.where(RouteSplit.kind == kind)
    return list(session.scalars(query.order_by(RouteSplit.id)))


def describe(row: RouteSplit) -> str:
    """`the canary of 'support'` or `experiment 'v3-trial'`, as messages name a split."""
    return f"the canary of {row.model!r}" if row.kind == CANARY else f"experiment {row.name!r}"


def targets(spec: Canary | Experiment) -> list[AdapterRef]:
    """The references a split sends requests to."""
    refs = [spec.target_ref] if isinstance(spec, Canary) else [arm.target_ref for arm in spec.arms]
    return [parse_reference(ref) for ref in refs]


def splits_targeting(session: Session, tenant_id: str, name: str, number: int) -> list[str]:
    """The splits that target version `number` of adapter `name` by its number (`name@3`, `name@v3`)."""
    return [
        describe(row)
        for row in split_rows(session, tenant_id)
        if any(
            ref.name == name and ref.version is not None and ref.version.removeprefix("v") == str(number)
            for ref in targets(split_spec(row))
        )
    ]


def drop_splits_naming(session: Session, tenant_id: str, name: str, *, actor: str) -> None:
    """Delete the tenant's splits whose model or a target names adapter `name` (which is being deleted).

    A split of another adapter that only targeted `name` is recorded as cleared on that adapter, with
    `deleted_adapter` beside the split in the event's detail.
    """
    for row in split_rows(session, tenant_id):
        owner = parse_reference(row.model).name
        if owner != name and all(ref.name != name for ref in targets(split_spec(row))):
            continue
        if owner != name:
            adapter = session.scalar(
                select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == owner)
            )
            if adapter is not None:
                detail = {**row.spec, "deleted_adapter": name}
                add_event(session, adapter, f"{row.kind}_cleared", actor=actor, detail=detail)
        session.delete(row)
    session.flush()
