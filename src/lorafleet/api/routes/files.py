"""Files (`/v1/files`): training rows (purpose `fine-tune`) and held-out eval suites (purpose `eval`),
uploaded with a size limit and validated row by row before anything is stored.

An upload over the limit is refused as it arrives (`api.uploads`): by its Content-Length before the body
is read, or once its bytes pass the limit; what passes streams to a temporary file, never into memory.

Asked to (`scrub=true`, .jsonl only), the upload's PHI/PII is replaced by consistent pseudonyms
(`privacy.scrub`) before anything is stored: the stored file is the scrubbed one, and its audit report is
kept beside it (`GET /v1/files/{id}/scrub_report`; its summary is the file's `scrub`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

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
    scrub: dict[str, Any] | None = Field(
        None,
        description="Scrubbed on upload: the audit report's summary (rows, found by kind and by recognizer, "
        "unscrubbed, the hash chain's head); the whole report is at /v1/files/{id}/scrub_report. "
        "None: stored as uploaded.",
    )

    @classmethod
    def of(cls, dataset: Dataset, scrub: dict[str, Any] | None = None) -> FilePublic:
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
            scrub=scrub,
        )

    @classmethod
    def stored(cls, dataset: Dataset, registry: Registry) -> FilePublic:
        """The file's record with the summary of its scrubbing report, when it has one."""
        from lorafleet.privacy.audit import report_summary

        report = registry.datasets.scrub_report(dataset)
        return cls.of(dataset, report_summary(report) if report is not None else None)


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
    scrub: Annotated[
        bool,
        Form(
            description="Replace PHI/PII (names, e-mails, phones, dates, record numbers, addresses, ...) "
            "with consistent pseudonyms before storing (.jsonl only); the audit report is kept with the file."
        ),
    ] = False,
) -> FilePublic:
    """Upload training or eval rows; every row is checked and a bad one is named by line, storing nothing."""
    return add_file(request, tenant, registry, file.filename, file.file, purpose, scrub=scrub)


def add_file(
    request: Request,
    tenant: str,
    registry: Registry,
    filename: str | None,
    stream: BinaryIO,
    purpose: str,
    *,
    scrub: bool = False,
) -> FilePublic:
    """Store the rows read from `stream` once every one passed the check (the upload route's and the
    dashboard's upload form's one path), scrubbed first when asked; over the size limit, or a bad row,
    stores nothing."""
    limit: int = request.app.state.settings.max_upload_bytes
    if purpose not in PURPOSES:
        raise DataError(f"purpose {purpose!r}: choose 'fine-tune' or 'eval'", field="purpose")
    name = Path(filename or "upload.jsonl").name
    if Path(name).suffix.lower() not in SUFFIXES:
        raise DataError(f"{name}: unsupported file type; upload one of {', '.join(SUFFIXES)}")
    if scrub and Path(name).suffix.lower() != ".jsonl":
        raise DataError(
            f"{name}: scrubbing reads .jsonl files; convert it or upload with scrub=false", field="scrub"
        )
    with tempfile.TemporaryDirectory(prefix="lorafleet-upload-") as folder:
        path = Path(folder) / name
        _receive(stream, path, limit)
        format, rows, tokens = _inspect(request, path, folder)
        report = None
        if scrub:
            path, report = _scrub(path, folder)
            format, rows, tokens = _inspect(request, path, folder)
        dataset = registry.datasets.add(
            tenant,
            path,
            filename=name,
            format=format,
            rows=rows,
            tokens=tokens,
            purpose=purpose,
            scrub_report=report,
        )
    return FilePublic.stored(dataset, registry)


def _receive(stream: BinaryIO, path: Path, limit: int) -> None:
    """Copy the upload to `path` a chunk at a time; `UploadTooLargeError` once it passes `limit` bytes."""
    size = 0
    with path.open("wb") as out:
        while chunk := stream.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise UploadTooLargeError(f"{path.name} is over the upload limit of {limit:,} bytes")
            out.write(chunk)


def _inspect(request: Request, path: Path, folder: str) -> tuple[str, int, int]:
    """(format, rows, tokens) of the file; a bad row is named by the file as uploaded, not the temporary
    folder."""
    from lorafleet.data import inspect_rows  # the data layer comes with torch

    try:
        return inspect_rows(path, request.app.state.tokenizer())
    except DataError as err:
        raise DataError(str(err).replace(f"{folder}/scrubbed/", "").replace(f"{folder}/", "")) from None


def _scrub(path: Path, folder: str) -> tuple[Path, Path]:
    """The scrubbed copy of the upload and its audit report, both in the upload's temporary folder."""
    from lorafleet.privacy.scrub import FieldChoice, report_path, scrub_jsonl

    target = Path(folder) / "scrubbed" / path.name
    target.parent.mkdir()
    try:
        scrub_jsonl(path, target, choice=FieldChoice())
    except DataError as err:
        raise DataError(str(err).replace(f"{folder}/", ""), field="scrub") from None
    return target, report_path(target)


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
    page = [FilePublic.stored(d, registry) for d in datasets[:limit]]
    return FileList(data=page, has_more=len(datasets) > limit)


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, tenant: TenantDep, registry: RegistryDep) -> FilePublic:
    """One file's details."""
    return FilePublic.stored(registry.datasets.get(tenant, file_id), registry)


@router.get("/{file_id}/scrub_report", response_model=dict[str, Any])
def get_scrub_report(file_id: str, tenant: TenantDep, registry: RegistryDep) -> dict[str, Any]:
    """The whole audit report of the file's scrubbing on upload (every row's entry, chained); 404 when the
    file was stored as uploaded."""
    report = registry.datasets.scrub_report(registry.datasets.get(tenant, file_id))
    if report is None:
        raise NotFoundError(f"file {file_id} was not scrubbed on upload, so it has no scrubbing report")
    return report


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
