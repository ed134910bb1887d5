"""A tenant's canaries and A/B experiments, and the router that reads them: `registry.routing`.

`route(tenant_id, model, user=...)` is the server's one resolution path. In one transaction it reads
the tenant's splits (for every request: a change applies to the very next one) and runs
`serving.router.Router` on the tenant's `TenantCatalog`, which answers each reference with an
`AdapterHandle`: the version's id (the engine's adapter key), `name@number`, artifact and base model.

Setting or clearing a split writes an adapter event in the same transaction, on the adapter its `model`
names: `canary_set`, `canary_cleared`, `experiment_set`, `experiment_cleared`, the split as detail.
A split's model must name one of the tenant's adapters, and its targets must resolve when it is set.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lorafleet.errors import ConflictError, InvalidNameError, NotFoundError, UnknownAdapterError
from lorafleet.registry.adapter_events import add_event
from lorafleet.registry.adapters import Adapters
from lorafleet.registry.database import Database
from lorafleet.registry.splits import CANARY, EXPERIMENT, split_rows, split_spec
from lorafleet.registry.tables import Adapter, RouteSplit, now
from lorafleet.serving.router import (
    AdapterHandle,
    AdapterRef,
    Canary,
    Experiment,
    Route,
    Router,
    RouterSettings,
    parse_reference,
)

DEFAULT_BASE_NAMES = ("base",)


class TenantCatalog:
    """The router's `AdapterCatalog` over one tenant's registry adapters, inside one session."""

    def __init__(self, session: Session, tenant_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def resolve(self, name: str, version: str | None = None, alias: str | None = None) -> AdapterHandle:
        found = Adapters._resolve(self.session, self.tenant_id, name, version=version, alias=alias)
        return AdapterHandle(
            version_id=found.id,
            reference=f"{name}@{found.number}",
            artifact=found.artifact,
            base_model=found.base_model,
        )

    def adapters_for_task(self, task: str) -> list[str]:
        """None: registry adapters list no tasks (requests name their adapter in `model`)."""
        return []


class Routing:
    """A tenant's canaries and experiments (`route_splits`), and `route`, which applies them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def route(
        self,
        tenant_id: str,
        model: str | None,
        *,
        user: str | None = None,
        task: str | None = None,
        base_names: Sequence[str] = DEFAULT_BASE_NAMES,
    ) -> Route:
        """Where the tenant's request for `model` goes, for `user` (sticky; None: drawn at random).

        `base_names` mean the base model alone. `UnknownAdapterError` names an unknown adapter, version
        or alias (or the split whose target is no longer known); `InvalidNameError` a malformed `model`.
        """
        with self.db.session() as session:
            settings = self._settings(session, tenant_id, base_names)
            return Router(TenantCatalog(session, tenant_id), settings).route(model, task=task, user=user)

    def settings(self, tenant_id: str, *, base_names: Sequence[str] = DEFAULT_BASE_NAMES) -> RouterSettings:
        """The tenant's canaries and experiments as the router's settings."""
        with self.db.session() as session:
            return self._settings(session, tenant_id, base_names)

    # --- canaries --------------------------------------------------------------------------------------

    def canary(self, tenant_id: str, model: str) -> Canary | None:
        """The canary of requests naming exactly `model`, if any."""
        with self.db.session() as session:
            row = self._row(session, tenant_id, CANARY, model=model)
            return Canary.model_validate(row.spec) if row is not None else None

    def canaries(self, tenant_id: str) -> list[Canary]:
        with self.db.session() as session:
            return [Canary.model_validate(row.spec) for row in split_rows(session, tenant_id, CANARY)]

    def set_canary(self, tenant_id: str, canary: Canary, *, actor: str) -> Canary:
        """Create or replace the canary of `canary.model`; `UnknownAdapterError` if its target is unknown."""
        with self.db.session() as session:
            adapter = self._owner(session, tenant_id, canary.model)
            self._check_target(session, tenant_id, canary.target_ref, field="target")
            row = self._row(session, tenant_id, CANARY, model=canary.model)
            spec = canary.model_dump(mode="json")
            self._save(session, row, tenant_id, CANARY, canary.model, canary.model, spec, actor)
            add_event(session, adapter, "canary_set", actor=actor, detail=spec)
        return canary

    def clear_canary(self, tenant_id: str, model: str, *, actor: str) -> Canary:
        """Remove the canary of `model` (its requests route as usual again); `NotFoundError` if none."""
        with self.db.session() as session:
            row = self._row(session, tenant_id, CANARY, model=model)
            if row is None:
                raise NotFoundError(f"no canary on {model!r}")
            self._clear(session, row, actor=actor)
            return Canary.model_validate(row.spec)

    # --- experiments -----------------------------------------------------------------------------------

    def experiments(self, tenant_id: str) -> list[Experiment]:
        with self.db.session() as session:
            return [Experiment.model_validate(row.spec) for row in split_rows(session, tenant_id, EXPERIMENT)]

    def experiment(self, tenant_id: str, name: str) -> Experiment:
        """The experiment `name`; `NotFoundError` if the tenant has none of that name."""
        with self.db.session() as session:
            row = self._row(session, tenant_id, EXPERIMENT, name=name)
            if row is None:
                raise NotFoundError(f"no experiment {name!r}")
            return Experiment.model_validate(row.spec)

    def set_experiment(self, tenant_id: str, experiment: Experiment, *, actor: str) -> Experiment:
        """Create or replace the experiment `experiment.name`; every arm's target must resolve, and no
        other experiment may split the same model (`ConflictError`)."""
        with self.db.session() as session:
            adapter = self._owner(session, tenant_id, experiment.model)
            for index, arm in enumerate(experiment.arms):
                self._check_target(session, tenant_id, arm.target_ref, field=f"arms.{index}.target")
            other = self._row(session, tenant_id, EXPERIMENT, model=experiment.model)
            if other is not None and other.name != experiment.name:
                raise ConflictError(
                    f"experiment {other.name!r} already splits {experiment.model!r}; "
                    f"clear it first, or change {other.name!r} instead"
                )
            row = self._row(session, tenant_id, EXPERIMENT, name=experiment.name)
            if row is not None and row.model != experiment.model:  # moved to another model
                previous = self._owner(session, tenant_id, row.model)
                add_event(session, previous, "experiment_cleared", actor=actor, detail=row.spec)
            spec = experiment.model_dump(mode="json")
            self._save(session, row, tenant_id, EXPERIMENT, experiment.model, experiment.name, spec, actor)
            add_event(session, adapter, "experiment_set", actor=actor, detail=spec)
        return experiment

    def clear_experiment(self, tenant_id: str, name: str, *, actor: str) -> Experiment:
        """End the experiment `name`; `NotFoundError` if none."""
        with self.db.session() as session:
            row = self._row(session, tenant_id, EXPERIMENT, name=name)
            if row is None:
                raise NotFoundError(f"no experiment {name!r}")
            self._clear(session, row, actor=actor)
            return Experiment.model_validate(row.spec)

    # --- inside a session ------------------------------------------------------------------------------

    @staticmethod
    def _settings(session: Session, tenant_id: str, base_names: Sequence[str]) -> RouterSettings:
        rows = [row for row in split_rows(session, tenant_id) if row.model not in base_names]
        specs = [split_spec(row) for row in rows]
        return RouterSettings(
            base_names=list(base_names),
            canaries=[spec for spec in specs if isinstance(spec, Canary)],
            experiments=[spec for spec in specs if isinstance(spec, Experiment)],
        )

    @staticmethod
    def _row(
        session: Session, tenant_id: str, kind: str, *, model: str | None = None, name: str | None = None
    ) -> RouteSplit | None:
        query = select(RouteSplit).where(RouteSplit.tenant_id == tenant_id, RouteSplit.kind == kind)
        query = query.where(RouteSplit.model == model) if model is not None else query
        query = query.where(RouteSplit.name == name) if name is not None else query
        return session.scalar(query)

    @staticmethod
    def _owner(session: Session, tenant_id: str, model: str) -> Adapter:
        """The adapter a split's `model` names; `UnknownAdapterError` if the tenant has none."""
        return Adapters._adapter(session, tenant_id, _parsed(model, field="model").name)

    @staticmethod
    def _check_target(session: Session, tenant_id: str, target: str, *, field: str) -> None:
        ref = _parsed(target, field=field)
        try:
            Adapters._resolve(session, tenant_id, ref.name, version=ref.version, alias=ref.alias)
        except UnknownAdapterError as err:
            raise UnknownAdapterError(f"{field} {target!r}: {err}") from err

    @staticmethod
    def _save(
        session: Session,
        row: RouteSplit | None,
        tenant_id: str,
        kind: str,
        model: str,
        name: str,
        spec: dict[str, object],
        actor: str,
    ) -> None:
        """Insert the split, or update `row`; a split written at the same moment is a `ConflictError`."""
        if row is None:
            session.add(
                RouteSplit(tenant_id=tenant_id, kind=kind, model=model, name=name, spec=spec, actor=actor)
            )
        else:
            row.model, row.spec, row.actor, row.updated_at = model, spec, actor, now()
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError as err:
            raise ConflictError(f"the {kind} {name!r} was changed at the same moment; try again") from err

    def _clear(self, session: Session, row: RouteSplit, *, actor: str) -> None:
        adapter = self._owner(session, row.tenant_id, row.model)
        add_event(session, adapter, f"{row.kind}_cleared", actor=actor, detail=row.spec)
        session.delete(row)


def _parsed(reference: str, *, field: str) -> AdapterRef:
    """`parse_reference`, its error naming `field`."""
    try:
        return parse_reference(reference)
    except InvalidNameError as err:
        raise InvalidNameError(f"{field}: {err}", field=field) from err
