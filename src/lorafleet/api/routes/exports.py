"""A version's edge exports (`/v1/adapters/{name}/versions/{version}/exports`): queue, list, read, download.

An export is a job: `POST` queues it (the format, variants and device target are checked at once) and a
worker runs `lorafleet export` on the version (`jobs.exports`); the exported files and their
`export.json` (sizes, agreement with the PyTorch model, speed, the target's verdicts) are stored with
the version and downloaded as one .tar.gz.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.api.errors import error_responses
from lorafleet.errors import ConflictError, NotFoundError
from lorafleet.export.plan import ExportPlan
from lorafleet.registry import Registry
from lorafleet.registry.tables import Export

router = APIRouter(prefix="/v1/adapters", tags=["exports"])


class ExportCreate(BaseModel):
    format: str = Field(description="gguf (llama.cpp, ollama) or onnx (ONNX Runtime).")
    quant: str | None = Field(
        None,
        max_length=64,
        description="Variants, comma-separated, or all. gguf: f16, q8_0, q4_0, q4_mix, lora; onnx: fp32, "
        "int8. Default: q8_0 / int8, or with a target every merged variant (the one that fits is kept).",
    )
    target: str | None = Field(
        None, max_length=64, description="A device profile (mobile_cpu, embedded_npu, raspberry_pi)."
    )


class ExportPublic(BaseModel):
    id: str
    object: str = "adapter.export"
    adapter: str
    version: int
    format: str
    quant: str | None
    target: str | None
    status: str = Field(description="queued, running, succeeded or failed.")
    bytes: int
    report: dict[str, Any] = Field(
        description="Its export.json once succeeded: per variant size and figures."
    )
    error: str | None
    created_at: int
    finished_at: int | None

    @classmethod
    def of(cls, name: str, number: int, export: Export) -> ExportPublic:
        return cls(
            id=export.id,
            adapter=name,
            version=number,
            format=export.format,
            quant=export.quant,
            target=export.target,
            status=export.status,
            bytes=export.bytes,
            report=export.report,
            error=export.error,
            created_at=int(export.created_at),
            finished_at=int(export.finished_at) if export.finished_at else None,
        )


class ExportList(BaseModel):
    object: str = "list"
    data: list[ExportPublic]


@router.post("/{name}/versions/{version}/exports", response_model=ExportPublic, status_code=201)
def create_export(
    name: str, version: str, body: ExportCreate, tenant: TenantDep, registry: RegistryDep
) -> ExportPublic:
    """Queue an export of the version; a worker runs it."""
    row = registry.adapters.version(tenant, name, version)
    ExportPlan.parse(body.format, body.quant, body.target)  # a bad field is a 400 now, not a failed job
    export = registry.exports.create(tenant, row, format=body.format, quant=body.quant, target=body.target)
    return ExportPublic.of(name, row.number, export)


@router.get("/{name}/versions/{version}/exports", response_model=ExportList)
def list_exports(name: str, version: str, tenant: TenantDep, registry: RegistryDep) -> ExportList:
    """The version's exports, newest first."""
    row = registry.adapters.version(tenant, name, version)
    return ExportList(
        data=[ExportPublic.of(name, row.number, e) for e in registry.exports.of_version(tenant, row.id)]
    )


@router.get("/{name}/versions/{version}/exports/{export_id}", response_model=ExportPublic)
def get_export(
    name: str, version: str, export_id: str, tenant: TenantDep, registry: RegistryDep
) -> ExportPublic:
    """One export: its status, and its report once it succeeded."""
    row = registry.adapters.version(tenant, name, version)
    return ExportPublic.of(name, row.number, _of_version(registry, tenant, row.id, export_id))


@router.get(
    "/{name}/versions/{version}/exports/{export_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(409),
    },
)
def download_export(
    name: str, version: str, export_id: str, tenant: TenantDep, registry: RegistryDep
) -> StreamingResponse:
    """The export's files and export.json as a .tar.gz (409 until it has succeeded)."""
    row = registry.adapters.version(tenant, name, version)
    export = _of_version(registry, tenant, row.id, export_id)
    if export.status != "succeeded":
        raise ConflictError(f"export {export_id} is {export.status}; only a succeeded export has files")
    buffer = io.BytesIO()
    stem = f"{name}-v{row.number}-{export.format}"
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(registry.exports.local_path(export), arcname=stem)
    buffer.seek(0)
    headers = {"Content-Disposition": f'attachment; filename="{stem}.tar.gz"'}
    return StreamingResponse(buffer, media_type="application/gzip", headers=headers)


def _of_version(registry: Registry, tenant: str, version_id: str, export_id: str) -> Export:
    """The tenant's export `export_id` of that version; `NotFoundError` for any other."""
    export = registry.exports.get(tenant, export_id)
    if export.version_id != version_id:
        raise NotFoundError(f"no export {export_id!r} of this version")
    return export
