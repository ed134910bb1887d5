"""Uploaded files (training rows, purpose `fine-tune`; held-out eval suites, purpose `eval`): stored as
artifacts with their SHA-256, row and token counts.

The caller validates the file (rows, columns, tokens: that needs the data layer and a tokenizer,
which the registry does not import) and hands over the counts; the registry stores the file, then
its row, so a failure at any point leaves neither. A file scrubbed on upload keeps its audit report as
a sidecar artifact beside it (`<id>.scrub.json`), stored before the file and removed with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from lorafleet.errors import ConflictError
from lorafleet.registry.artifacts import ArtifactStore, file_sha256, sidecar_url
from lorafleet.registry.database import Database
from lorafleet.registry.tables import Adapter, Dataset, EvalSuite, Job, Tenant, new_id, owned
from lorafleet.registry.usage import check_storage, lock_tenant, record_usage

SCRUB_REPORT = ".scrub.json"  # the sidecar holding a scrubbed file's audit report (`privacy.audit`)


class Datasets:
    """A tenant's uploaded training files."""

    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def add(
        self,
        tenant_id: str,
        source: Path,
        *,
        filename: str,
        format: str,
        rows: int,
        tokens: int,
        purpose: str = "fine-tune",
        scrub_report: Path | None = None,
    ) -> Dataset:
        """Store the validated file `source` (and the audit report of its scrubbing, when it was scrubbed)
        and its row; `QuotaExceededError` past the storage quota. A failure at any point stores nothing."""
        size = source.stat().st_size
        with self.db.session() as session:
            check_storage(session, session.get_one(Tenant, tenant_id), new_bytes=size, new_adapter=False)
        dataset_id = new_id("file")
        suffix = Path(filename).suffix.lower()[:10] or ".jsonl"
        stored: list[str] = []
        try:
            if scrub_report is not None:
                key = f"tenants/{tenant_id}/files/{dataset_id}{SCRUB_REPORT}"
                stored.append(self.artifacts.put_file(scrub_report, key))
            url = self.artifacts.put_file(source, f"tenants/{tenant_id}/files/{dataset_id}{suffix}")
            stored.append(url)
            dataset = Dataset(
                id=dataset_id,
                tenant_id=tenant_id,
                filename=Path(filename).name[:255],
                purpose=purpose,
                format=format,
                bytes=size,
                sha256=file_sha256(source),
                rows=rows,
                tokens=tokens,
                artifact=url,
            )
            with self.db.session() as session:
                check_storage(session, lock_tenant(session, tenant_id), new_bytes=size, new_adapter=False)
                session.add(dataset)
                record_usage(session, tenant_id, "storage", storage_bytes=size)
        except BaseException:
            for artifact in stored:
                self.artifacts.delete(artifact)
            raise
        return dataset

    def scrub_report(self, dataset: Dataset) -> dict[str, Any] | None:
        """The audit report of the file's scrubbing on upload; None when it was uploaded unscrubbed."""
        url = sidecar_url(dataset.artifact, SCRUB_REPORT)
        if not self.artifacts.exists(url):
            return None
        report: dict[str, Any] = json.loads(self.artifacts.local_path(url).read_text(encoding="utf-8"))
        return report

    def get(self, tenant_id: str, dataset_id: str) -> Dataset:
        with self.db.session() as session:
            return owned(session, Dataset, dataset_id, tenant_id, what="file")

    def all(self, tenant_id: str) -> list[Dataset]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(Dataset).where(Dataset.tenant_id == tenant_id).order_by(Dataset.created_at)
                )
            )

    def local_path(self, dataset: Dataset) -> Path:
        return self.artifacts.local_path(dataset.artifact)

    def delete(self, tenant_id: str, dataset_id: str) -> Dataset:
        """Delete a file no job or eval suite refers to; `ConflictError` naming one that does."""
        with self.db.session() as session:
            dataset = owned(session, Dataset, dataset_id, tenant_id, what="file")
            job = session.scalar(
                select(Job.id).where(
                    (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id)
                )
            )
            if job is not None:
                raise ConflictError(f"file {dataset_id} is used by fine-tuning job {job}; it is kept")
            suite = session.execute(
                select(EvalSuite.id, Adapter.name)
                .join(Adapter, EvalSuite.adapter_id == Adapter.id)
                .where(EvalSuite.dataset_id == dataset_id)
            ).first()
            if suite is not None:
                raise ConflictError(
                    f"file {dataset_id} is eval suite {suite[0]} of adapter {suite[1]!r}; it is kept "
                    f"(delete the suite first: DELETE /v1/adapters/{suite[1]}/suites/{suite[0]})"
                )
            session.delete(dataset)
            record_usage(session, tenant_id, "storage", storage_bytes=-dataset.bytes)
        self.artifacts.delete(dataset.artifact)
        self.artifacts.delete(sidecar_url(dataset.artifact, SCRUB_REPORT))
        return dataset
