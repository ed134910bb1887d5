"""Uploaded files (training rows, purpose `fine-tune`; held-out eval suites, purpose `eval`): stored as
artifacts with their SHA-256, row and token counts.

The caller validates the file (rows, columns, tokens: that needs the data layer and a tokenizer,
which the registry does not import) and hands over the counts; the registry stores the file, then
its row, so a failure at any point leaves neither.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from lorafleet.errors import ConflictError
from lorafleet.registry.artifacts import ArtifactStore, file_sha256
from lorafleet.registry.database import Database
from lorafleet.registry.tables import Adapter, Dataset, EvalSuite, Job, Tenant, new_id, owned
from lorafleet.registry.usage import check_storage, lock_tenant, record_usage


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
    ) -> Dataset:
        """Store the validated file `source` and its row; `QuotaExceededError` past the storage quota."""
        size = source.stat().st_size
        with self.db.session() as session:
            check_storage(session, session.get_one(Tenant, tenant_id), new_bytes=size, new_adapter=False)
        dataset_id = new_id("file")
        suffix = Path(filename).suffix.lower()[:10] or ".jsonl"
        url = self.artifacts.put_file(source, f"tenants/{tenant_id}/files/{dataset_id}{suffix}")
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
        try:
            with self.db.session() as session:
                check_storage(session, lock_tenant(session, tenant_id), new_bytes=size, new_adapter=False)
                session.add(dataset)
                record_usage(session, tenant_id, "storage", storage_bytes=size)
        except BaseException:
            self.artifacts.delete(url)
            raise
        return dataset

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
        return dataset
