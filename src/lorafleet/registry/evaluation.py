"""Evaluation suites and promotion-gate policies of a tenant's adapters, and what reads the scores.

A suite is an uploaded file (purpose `eval`) and its metric, registered for one adapter; registering one
for a name without versions creates the adapter (so its first version is scored too). The worker scores
every new version on `suites_to_score` and writes the scores into the version's `metrics["evaluation"]`
(shape in `evaluation.forgetting`); `lineage_evaluation` and `gate_report` read them back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.errors import ConfigError, ConflictError, NotFoundError
from lorafleet.evaluation.forgetting import SUITE_METRICS, lineage_evaluation
from lorafleet.evaluation.gate import GatePolicy, check_gate
from lorafleet.registry.adapters import Adapters
from lorafleet.registry.database import Database
from lorafleet.registry.lineage import gate_report, scored_chain, suites_of, suites_of_lineage
from lorafleet.registry.tables import Adapter, AdapterVersion, Dataset, EvalSuite, Tenant, owned
from lorafleet.registry.usage import check_storage


class Evaluations:
    """A tenant's eval suites and gate policies, and the gate reports and forgetting of its versions."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- suites -----------------------------------------------------------------------------------------

    def add_suite(self, tenant_id: str, name: str, *, dataset_id: str, metric: str) -> EvalSuite:
        """Register the uploaded file `dataset_id` (purpose `eval`) as a suite of adapter `name`.

        `ConfigError` naming `metric` or `file` when one is wrong; `NotFoundError` for another tenant's file.
        """
        if metric not in SUITE_METRICS:
            raise ConfigError(f"metric {metric!r}: choose one of {', '.join(SUITE_METRICS)}", field="metric")
        with self.db.session() as session:
            dataset = owned(session, Dataset, dataset_id, tenant_id, what="file")
            if dataset.purpose != "eval":
                raise ConfigError(
                    f"file {dataset_id} was uploaded with purpose {dataset.purpose!r}; "
                    "upload held-out rows with purpose 'eval' to make a suite of them",
                    field="file",
                )
            exists = session.scalar(
                select(Adapter.id).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
            )
            if exists is None:
                check_storage(session, session.get_one(Tenant, tenant_id), new_bytes=0, new_adapter=True)
            adapter = Adapters._adapter(session, tenant_id, name, create=True)
            suite = EvalSuite(
                tenant_id=tenant_id, adapter_id=adapter.id, dataset_id=dataset_id, metric=metric
            )
            session.add(suite)
            session.flush()
        return suite

    def suites(self, tenant_id: str, name: str) -> list[EvalSuite]:
        """The suites registered for adapter `name` itself, oldest first."""
        with self.db.session() as session:
            return suites_of(session, [Adapters._adapter(session, tenant_id, name).id])

    def suites_to_score(
        self, tenant_id: str, adapter_name: str, parent_version_id: str | None = None
    ) -> list[EvalSuite]:
        """What a new version of `adapter_name` trained from `parent_version_id` is scored on: the suites of
        its own adapter (if it exists yet) and of the adapter of every version in the parent's chain."""
        with self.db.session() as session:
            parent = (
                owned(session, AdapterVersion, parent_version_id, tenant_id, what="adapter version")
                if parent_version_id is not None
                else None
            )
            adapter_id = session.scalar(
                select(Adapter.id).where(Adapter.tenant_id == tenant_id, Adapter.name == adapter_name)
            )
            return suites_of_lineage(session, adapter_id, parent)

    def suite_specs(
        self, tenant_id: str, adapter_name: str, parent_version_id: str | None = None
    ) -> list[dict[str, str]]:
        """`suites_to_score` as the job runner's spec lists them: `{"id", "adapter" (the name of the
        adapter that registered it), "metric", "file" (its dataset id, for `registry.datasets`)}`."""
        suites = self.suites_to_score(tenant_id, adapter_name, parent_version_id)
        with self.db.session() as session:
            names = {s.adapter_id: session.get_one(Adapter, s.adapter_id).name for s in suites}
        return [
            {"id": s.id, "adapter": names[s.adapter_id], "metric": s.metric, "file": s.dataset_id}
            for s in suites
        ]

    def suites_for_version(self, tenant_id: str, version_id: str) -> list[EvalSuite]:
        """What the existing version `version_id` is scored on (as `suites_to_score` for its lineage)."""
        with self.db.session() as session:
            version = owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")
            parent = session.get(AdapterVersion, version.parent_version_id or "")
            if parent is not None and parent.tenant_id != tenant_id:
                parent = None
            return suites_of_lineage(session, version.adapter_id, parent)

    def delete_suite(self, tenant_id: str, name: str, suite_id: str) -> EvalSuite:
        """Unregister one suite of `name` (its file stays; scores already stored stay with their versions);
        `ConflictError` while a gate policy of the tenant names it."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            suite = session.get(EvalSuite, suite_id)
            if suite is None or suite.adapter_id != adapter.id:
                raise NotFoundError(f"adapter {name!r} has no eval suite {suite_id!r}")
            for other in session.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id)):
                if other.gate_policy is None:  # (stored as JSON null: not filtered in SQL)
                    continue
                if suite_id in GatePolicy.model_validate(other.gate_policy).suite_ids():
                    raise ConflictError(
                        f"eval suite {suite_id} is named by the gate policy of adapter {other.name!r}; "
                        "change that policy first"
                    )
            session.delete(suite)
        return suite

    # --- the gate ---------------------------------------------------------------------------------------

    def set_policy(self, tenant_id: str, name: str, policy: GatePolicy | None) -> GatePolicy | None:
        """Set (or, with None, remove) the gate of adapter `name`; `ConfigError` for a suite id it names
        that is not one of the tenant's suites."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            if policy is not None:
                for suite_id in sorted(policy.suite_ids()):
                    suite = session.get(EvalSuite, suite_id)
                    if suite is None or suite.tenant_id != tenant_id:
                        raise ConfigError(f"{suite_id}: no such eval suite", field=suite_id)
            adapter.gate_policy = policy.model_dump() if policy is not None else None
        return policy

    def policy(self, tenant_id: str, name: str) -> GatePolicy | None:
        with self.db.session() as session:
            stored = Adapters._adapter(session, tenant_id, name).gate_policy
        return GatePolicy.model_validate(stored) if stored is not None else None

    def gate_report(self, tenant_id: str, name: str, number: int | str) -> dict[str, Any]:
        """Every check of version `number` against the adapter's gate (`evaluation.gate.check_gate`);
        with no policy, a passing report without checks and `policy` None."""
        with self.db.session() as session:
            adapter = Adapters._adapter(session, tenant_id, name)
            return _report(session, adapter, Adapters._version(session, adapter, number), None)

    def check(self, tenant_id: str, version_id: str, policy: GatePolicy | None = None) -> dict[str, Any]:
        """The gate report of version `version_id` under `policy`; None: as `gate_report` (its adapter's)."""
        with self.db.session() as session:
            version = owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")
            return _report(session, session.get_one(Adapter, version.adapter_id), version, policy)

    def record_fairness(
        self, tenant_id: str, name: str, number: int | str, report: dict[str, Any]
    ) -> AdapterVersion:
        """Store `report` (`evaluation.fairness`) as version `number`'s `metrics.fairness`, replacing an
        earlier one: the only metrics a version gains after it was registered (its weights never change)."""
        with self.db.session() as session:
            version = Adapters._version(session, Adapters._adapter(session, tenant_id, name), number)
            version.metrics = {**version.metrics, "fairness": report}
            return version

    def lineage_evaluation(self, tenant_id: str, version_id: str) -> dict[str, Any]:
        """The forgetting matrix along the version's chain, its forgetting per suite, BWT and drift."""
        with self.db.session() as session:
            version = owned(session, AdapterVersion, version_id, tenant_id, what="adapter version")
            return lineage_evaluation(scored_chain(session, version))


def _report(
    session: Session, adapter: Adapter, version: AdapterVersion, policy: GatePolicy | None
) -> dict[str, Any]:
    """`version` checked against `policy`, or with None against its adapter's gate (no gate: a passing
    report without checks, `policy` None)."""
    if policy is not None:
        own = [suite.id for suite in suites_of(session, [adapter.id])]
        return check_gate(policy, scored_chain(session, version), own)
    report = gate_report(session, adapter, version)
    if report is None:
        report = {**check_gate(GatePolicy(), scored_chain(session, version), []), "policy": None}
    return report
