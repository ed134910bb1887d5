"""`Registry`: one database and one artifact store, with the stores for each kind of record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from lorafleet.errors import NotFoundError, UnknownAdapterError
from lorafleet.registry.adaptation import Adaptation
from lorafleet.registry.adapters import Adapters
from lorafleet.registry.artifacts import ArtifactStore
from lorafleet.registry.database import Database
from lorafleet.registry.datasets import Datasets
from lorafleet.registry.evaluation import Evaluations
from lorafleet.registry.exports import Exports
from lorafleet.registry.jobs import Jobs
from lorafleet.registry.rate_limits import RateLimits
from lorafleet.registry.requests import RequestLog
from lorafleet.registry.routing import Routing
from lorafleet.registry.tables import AdapterVersion, Job
from lorafleet.registry.tenants import Tenants
from lorafleet.registry.usage import Usage, record_usage


class Registry:
    """Everything the server stores: `tenants`, `datasets`, `jobs`, `adapters` (versions, aliases, events),
    `routing` (canaries, A/B experiments, and the router that applies them), `evaluation` (eval suites,
    gate policies, gate reports), `usage`, `rate_limits` (each API key's bucket of requests per minute),
    `requests` (the request log: completions served and their feedback), `adaptation` (adaptation
    policies and their rollouts), `exports` (export jobs of versions).

    `database_url` defaults to `$LORAFLEET_DATABASE_URL` or SQLite under `$LORAFLEET_HOME`;
    `artifacts_url` to `$LORAFLEET_ARTIFACTS_URL` or `$LORAFLEET_HOME/artifacts`. The schema is migrated
    to the newest revision on opening.
    """

    def __init__(self, database_url: str | None = None, *, artifacts_url: str | None = None) -> None:
        self.db = Database(database_url)
        self.artifacts = ArtifactStore(artifacts_url)
        self.tenants = Tenants(self.db)
        self.datasets = Datasets(self.db, self.artifacts)
        self.jobs = Jobs(self.db)
        self.adapters = Adapters(self.db, self.artifacts)
        self.routing = Routing(self.db)
        self.evaluation = Evaluations(self.db)
        self.usage = Usage(self.db)
        self.rate_limits = RateLimits(self.db)
        self.requests = RequestLog(self.db)
        self.adaptation = Adaptation(self.db)
        self.exports = Exports(self.db, self.artifacts)

    def complete_job(
        self,
        job: Job,
        worker_id: str,
        adapter_dir: Path,
        *,
        metrics: dict[str, Any],
        trained_tokens: int,
        compute_seconds: float,
    ) -> AdapterVersion:
        """Register the job's adapter as a new version and mark the job succeeded, in one transaction.

        If the worker no longer owns the job (`ConflictError`), nothing is registered.
        """

        def finish(session: Session, version: AdapterVersion) -> None:
            self.jobs.finish(
                job.id,
                worker_id,
                "succeeded",
                session=session,
                version_id=version.id,
                trained_tokens=trained_tokens,
                metrics=metrics,
            )
            record_usage(
                session,
                job.tenant_id,
                "training",
                job_id=job.id,
                model=job.adapter_name,
                trained_tokens=trained_tokens,
                compute_seconds=compute_seconds,
            )

        return self.adapters.register(
            job.tenant_id,
            job.adapter_name,
            adapter_dir,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            job_id=job.id,
            parent_version_id=job.parent_version_id,
            metrics=metrics,
            in_same_transaction=finish,
        )

    def locate(self, ref: str) -> Path:
        """`AdapterSource` for the serving engine: a version id → its local adapter directory."""
        with self.db.session() as session:
            version = session.get(AdapterVersion, ref)
        if version is None:
            raise UnknownAdapterError(f"no adapter version {ref!r}")
        try:
            return self.artifacts.local_path(version.artifact)
        except NotFoundError as err:
            raise UnknownAdapterError(str(err)) from err

    def close(self) -> None:
        self.db.close()
