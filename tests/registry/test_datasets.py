"""Uploaded datasets: stored with their digest and counts, all or nothing, per tenant, within quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from lorafleet.errors import ConflictError, NotFoundError, QuotaExceededError
from lorafleet.registry import Quotas, Registry
from lorafleet.registry.artifacts import file_sha256
from lorafleet.registry.tables import Dataset, Tenant
from tests.registry.contention import contend_before


def stored_files(artifacts_dir: Path) -> list[Path]:
    return [p for p in artifacts_dir.rglob("*") if p.is_file()]


def test_add_stores_the_file_with_its_digest_and_counts(
    registry: Registry, tenant: Tenant, make_dataset_file: Callable[..., Path], artifacts_dir: Path
) -> None:
    source = make_dataset_file("train.jsonl", rows=4)
    dataset = registry.datasets.add(
        tenant.id, source, filename="train.jsonl", format="prompt_completion", rows=4, tokens=40
    )
    assert dataset.id.startswith("file-")
    assert (dataset.filename, dataset.rows, dataset.tokens) == ("train.jsonl", 4, 40)
    assert (dataset.bytes, dataset.sha256) == (source.stat().st_size, file_sha256(source))
    stored = registry.datasets.local_path(dataset)
    assert stored.read_bytes() == source.read_bytes()
    assert stored.is_relative_to(artifacts_dir / "tenants" / tenant.id)
    again = registry.datasets.get(tenant.id, dataset.id)
    assert (again.sha256, again.bytes, again.artifact) == (dataset.sha256, dataset.bytes, dataset.artifact)
    assert [d.id for d in registry.datasets.all(tenant.id)] == [dataset.id]


def test_filename_is_reduced_to_its_last_part(
    registry: Registry, tenant: Tenant, make_dataset_file: Callable[..., Path]
) -> None:
    source = make_dataset_file("train.jsonl")
    dataset = registry.datasets.add(
        tenant.id, source, filename="../../secret/train.JSONL", format="prompt_completion", rows=3, tokens=30
    )
    assert dataset.filename == "train.JSONL"
    assert dataset.artifact.endswith(f"{dataset.id}.jsonl")


@pytest.fixture
def failing_commit(registry: Registry) -> Iterator[None]:
    """Every flush that adds a Dataset row fails, as if the database went away mid-transaction."""

    def refuse(session: Session, _context: object, _instances: object) -> None:
        if any(isinstance(row, Dataset) for row in session.new):
            raise RuntimeError("database went away (injected)")

    event.listen(registry.db.sessions, "before_flush", refuse)
    yield
    event.remove(registry.db.sessions, "before_flush", refuse)


def test_a_failed_commit_deletes_the_stored_file(
    registry: Registry,
    tenant: Tenant,
    make_dataset_file: Callable[..., Path],
    artifacts_dir: Path,
    failing_commit: None,
) -> None:
    source = make_dataset_file()
    with pytest.raises(RuntimeError, match="injected"):
        registry.datasets.add(
            tenant.id, source, filename="t.jsonl", format="prompt_completion", rows=3, tokens=1
        )
    assert registry.datasets.all(tenant.id) == []
    assert stored_files(artifacts_dir) == []
    assert registry.usage.daily(tenant.id, start=0, end=2e10) == []


def test_another_tenants_dataset_is_not_found(
    registry: Registry, tenant: Tenant, other_tenant: Tenant, add_dataset: Callable[..., Dataset]
) -> None:
    dataset = add_dataset(tenant.id)
    with pytest.raises(NotFoundError, match=dataset.id):
        registry.datasets.get(other_tenant.id, dataset.id)
    with pytest.raises(NotFoundError):
        registry.datasets.delete(other_tenant.id, dataset.id)
    assert registry.datasets.all(other_tenant.id) == []
    assert registry.datasets.get(tenant.id, dataset.id).id == dataset.id


def test_delete_removes_row_and_file(
    registry: Registry, tenant: Tenant, add_dataset: Callable[..., Dataset], artifacts_dir: Path
) -> None:
    dataset = add_dataset(tenant.id)
    registry.datasets.delete(tenant.id, dataset.id)
    assert registry.datasets.all(tenant.id) == []
    assert stored_files(artifacts_dir) == []
    with pytest.raises(NotFoundError):
        registry.datasets.get(tenant.id, dataset.id)


def test_delete_is_refused_while_a_job_uses_the_file(
    registry: Registry, tenant: Tenant, add_dataset: Callable[..., Dataset]
) -> None:
    train, validation = add_dataset(tenant.id, "train.jsonl"), add_dataset(tenant.id, "valid.jsonl")
    job = registry.jobs.create(
        tenant.id,
        adapter_name="support",
        dataset_id=train.id,
        validation_dataset_id=validation.id,
        base_model="tiny",
    )
    for used in (train, validation):
        with pytest.raises(ConflictError, match=job.id):
            registry.datasets.delete(tenant.id, used.id)
        assert registry.datasets.local_path(registry.datasets.get(tenant.id, used.id)).is_file()


def test_storage_quota_refuses_a_file_that_does_not_fit(
    registry: Registry, make_dataset_file: Callable[..., Path], artifacts_dir: Path
) -> None:
    source = make_dataset_file(rows=5)
    size = source.stat().st_size
    tenant = registry.tenants.create("small", quotas=Quotas(max_storage_bytes=size + size // 2))
    first = registry.datasets.add(tenant.id, source, filename="a.jsonl", format="f", rows=5, tokens=50)
    with pytest.raises(QuotaExceededError, match="quota") as refused:
        registry.datasets.add(tenant.id, source, filename="b.jsonl", format="f", rows=5, tokens=50)
    assert refused.value.retry_after > 0
    assert [d.id for d in registry.datasets.all(tenant.id)] == [first.id]
    assert len(stored_files(artifacts_dir)) == 1
    registry.datasets.delete(tenant.id, first.id)  # frees the space
    registry.datasets.add(tenant.id, source, filename="b.jsonl", format="f", rows=5, tokens=50)


def test_storage_quota_holds_for_two_replicas_storing_at_once(
    registry: Registry,
    open_registry: Callable[[], Registry],
    make_dataset_file: Callable[..., Path],
    artifacts_dir: Path,
) -> None:
    """Another replica stores a file while this one's, which takes the last of the quota, is about to
    commit: it was let through before its upload, but is refused when it records the file (the tenant's
    row is locked until this one commits), and its uploaded copy is removed."""
    source = make_dataset_file(rows=5)
    size = source.stat().st_size
    tenant = registry.tenants.create("small", quotas=Quotas(max_storage_bytes=size + size // 2))
    other = open_registry()

    def contender() -> None:
        other.datasets.add(tenant.id, source, filename="b.jsonl", format="f", rows=5, tokens=50)

    with contend_before(registry.db.engine, contender, "INSERT INTO datasets") as errors:
        first = registry.datasets.add(tenant.id, source, filename="a.jsonl", format="f", rows=5, tokens=50)
    assert [type(error) for error in errors] == [QuotaExceededError]
    assert [d.id for d in registry.datasets.all(tenant.id)] == [first.id]
    assert len(stored_files(artifacts_dir)) == 1
