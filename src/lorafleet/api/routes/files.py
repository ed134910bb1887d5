"""Files (`/v1/files`): training rows (purpose `fine-tune`) and held-out eval suites (purpose `eval`),
uploaded with a size limit and validated row by row before anything is stored.

An upload over the limit is refused as it arrives (`api.uploads`): by its Content-Length before the body
is read, or once its bytes pass the limit; what passes streams to a temporary file, never into memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from lorafleet.api.deps import RegistryDep, TenantDep
from lorafleet.api.errors import UploadTooLargeError, error_responses
from lorafleet.api.uploads import LimitedBodyRoute
from lorafleet.errors import DataError, NotFoundError
from lorafleet.registry import Registry
from lorafleet.registry.tables import Dataset

router = APIRouter(prefix="/v1/files", tags=["files"], route_class=LimitedBodyRoute)  # refused before read
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
PURPOSES = (
    "fine-tune",
    "eval",
)  # training rows; held-out rows of an eval suite (`/v1/adapters/{name}/suites`)
_CHUNK = 1 << 20


class FilePublic(BaseModel):
    """OpenAI's file object, with the row and token counts found on upload."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    format: str
    rows: int
    tokens: int
    sha256: str

    @classmethod
    def of(cls, dataset: Dataset) -> FilePublic:
        return cls(
            id=dataset.id,
            bytes=dataset.bytes,
            created_at=int(dataset.created_at),
            filename=dataset.filename,
            purpose=dataset.purpose,
            format=dataset.format,
            rows=dataset.rows,
            tokens=dataset.tokens,
            sha256=dataset.sha256,
        )


class FileList(BaseModel):
    object: str = "list"
    data: list[FilePublic]
    has_more: bool = Field(False, description="More files follow: ask again with `after` = the last id.")


class FileDeleted(BaseModel):
    id: str
    object: str = "file"
    deleted: bool = True


@router.post("", response_model=FilePublic, status_code=201, responses=error_responses(413))
def upload_file(
    request: Request,
    tenant: TenantDep,
    registry: RegistryDep,
    file: Annotated[UploadFile, File(description="Training rows: .jsonl, .json, .csv or .parquet.")],
    purpose: Annotated[
        str, Form(description="'fine-tune' (training rows) or 'eval' (held-out rows of an eval suite).")
    ] = "fine-tune",
) -> FilePublic:
    """Upload training or eval rows; every row is checked and a bad one is named by line, storing nothing."""
    return add_file(request, tenant, registry, file.filename, file.file, purpose)


def add_file(
    request: Request, tenant: str, registry: Registry, filename: str | None, stream: BinaryIO, purpose: str
) -> FilePublic:
    """Store the rows read from `stream` once every one passed the check (the upload route's and the
    dashboard's upload form's one path); over the size limit, or a bad row, stores nothing."""
    from lorafleet.data import inspect_rows  # the data layer comes with torch

    limit: int = request.app.state.settings.max_upload_bytes
    if purpose not in PURPOSES:
        raise DataError(f"purpose {purpose!r}: choose 'fine-tune' or 'eval'", field="purpose")
    name = Path(filename or "upload.jsonl").name
    if Path(name).suffix.lower() not in SUFFIXES:
        raise DataError(f"{name}: unsupported file type; upload one of {', '.join(SUFFIXES)}")
    with tempfile.TemporaryDirectory(prefix="lorafleet-upload-") as folder:
        path = Path(folder) / name
        size = 0
        with path.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise UploadTooLargeError(f"{name} is over the upload limit of {limit:,} bytes")
                out.write(chunk)
        try:
            format, rows, tokens = inspect_rows(path, request.app.state.tokenizer())
        except DataError as err:  # name the file as uploaded, not the temporary folder
            raise DataError(str(err).replace(f"{folder}/", "")) from None
        dataset = registry.datasets.add(
            tenant, path, filename=name, format=format, rows=rows, tokens=tokens, purpose=purpose
        )
    return FilePublic.of(dataset)


@router.get("", response_model=FileList)
def list_files(
    tenant: TenantDep,
    registry: RegistryDep,
    after: str | None = Query(None, description="Id of the last file of the previous page."),
    limit: int = Query(10_000, ge=1, le=10_000),
) -> FileList:
    """The tenant's files, oldest first, a page at a time (OpenAI's cursor pagination)."""
    datasets = registry.datasets.all(tenant)
    if after is not None:
        ids = [d.id for d in datasets]
        if after not in ids:
            raise NotFoundError(f"no file {after!r}")
        datasets = datasets[ids.index(after) + 1 :]
    return FileList(data=[FilePublic.of(d) for d in datasets[:limit]], has_more=len(datasets) > limit)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, tenant: TenantDep, registry: RegistryDep) -> FilePublic:
    """One file's details."""
    return FilePublic.of(registry.datasets.get(tenant, file_id))


@router.get(
    "/{file_id}/content",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
def get_file_content(file_id: str, tenant: TenantDep, registry: RegistryDep) -> FileResponse:
    """The file as uploaded."""
    dataset = registry.datasets.get(tenant, file_id)
    path = registry.datasets.local_path(dataset)
    return FileResponse(path, filename=dataset.filename, media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(409))
def delete_file(file_id: str, tenant: TenantDep, registry: RegistryDep) -> FileDeleted:
    """Delete a file that no fine-tuning job or eval suite uses."""
    registry.datasets.delete(tenant, file_id)
    return FileDeleted(id=file_id)
