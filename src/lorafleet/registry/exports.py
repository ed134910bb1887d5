"""`Exports`: export jobs of adapter versions: queued through the API, run by a worker, kept with the version.

A worker claims the oldest queued export, runs `lorafleet export` on the version in its own process and
hands the folder it wrote to `succeed`, which stores it in the artifact store (all or nothing) before the
row names it; a failure is recorded with its message. Exports are read per tenant: another tenant's
export is "not found".
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from lorafleet.registry.artifacts import ArtifactStore, directory_bytes
from lorafleet.registry.database import Database
from lorafleet.registry.queue import claim_oldest
from lorafleet.registry.tables import AdapterVersion, Export, now, owned

MANIFEST = "export.json"  # export.exporter's, not imported: the registry stays free of torch


class Exports:
    def __init__(self, db: Database, artifacts: ArtifactStore) -> None:
        self.db = db
        self.artifacts = artifacts

    def create(
        self, tenant_id: str, version: AdapterVersion, *, format: str, quant: str | None, target: str | None
    ) -> Export:
        """Queue an export of `version` (already checked to be the tenant's, the plan already validated)."""
        with self.db.session() as session:
            row = Export(
                tenant_id=tenant_id, version_id=version.id, format=format, quant=quant, target=target
            )
            session.add(row)
            session.flush()
            return row

    def get(self, tenant_id: str, export_id: str) -> Export:
        with self.db.session() as session:
            return owned(session, Export, export_id, tenant_id, what="export")

    def of_version(self, tenant_id: str, version_id: str) -> list[Export]:
        """The version's exports, newest first."""
        with self.db.session() as session:
            query = (
                select(Export)
                .where(Export.tenant_id == tenant_id, Export.version_id == version_id)
                .order_by(Export.created_at.desc(), Export.id)
            )
            return list(session.scalars(query))

    def local_path(self, export: Export) -> Path:
        """The stored folder of a succeeded export, on this machine."""
        assert export.artifact is not None, "only a succeeded export has files"
        return self.artifacts.local_path(export.artifact)

    # --- workers' side ----------------------------------------------------------------------------------

    def claim(self, worker_id: str) -> tuple[Export, AdapterVersion] | None:
        """Take the oldest queued export for `worker_id`, with its version; None when there is none."""
        export = claim_oldest(
            self.db, Export, {"status": "running", "worker_id": worker_id, "started_at": now()}
        )
        if export is None:
            return None
        with self.db.session() as session:
            return export, session.get_one(AdapterVersion, export.version_id)

    def succeed(self, export_id: str, folder: Path) -> Export:
        """Store `folder` (what `lorafleet export` wrote) and mark the export succeeded with its report."""
        report = json.loads((folder / MANIFEST).read_text())
        with self.db.session() as session:
            row = session.get_one(Export, export_id)
            tenant_id = row.tenant_id
        url = self.artifacts.put_directory(folder, f"exports/{tenant_id}/{export_id}")
        with self.db.session() as session:
            row = session.get_one(Export, export_id)
            row.status, row.artifact, row.report = "succeeded", url, report
            row.bytes, row.finished_at = directory_bytes(folder), now()
            return row

    def fail(self, export_id: str, message: str) -> Export:
        with self.db.session() as session:
            row = session.get_one(Export, export_id)
            row.status, row.error, row.finished_at = "failed", message, now()
            return row
