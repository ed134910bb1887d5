"""Adapters: numbered immutable versions, aliases with an audited history, jobs completing into versions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lorafleet.errors import (
    ConflictError,
    InvalidNameError,
    NotFoundError,
    QuotaExceededError,
    UnknownAdapterError,
)
from lorafleet.registry import Quotas, Registry
from lorafleet.registry.artifacts import directory_bytes, directory_sha256
from lorafleet.registry.tables import AdapterVersion, Dataset, Job, Tenant, UsageRecord
from tests.registry.contention import contend_at_commit


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def three_versions(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path]
) -> list[AdapterVersion]:
    """Versions 1, 2, 3 of `support`, each with different weights."""
    return [
        registry.adapters.register(
            tenant.id, "support", make_adapter_dir(f"v{i}", weights=bytes([i]) * 10), base_model="tiny"
        )
        for i in (1, 2, 3)
    ]


def test_register_numbers_versions_with_digest_size_and_lineage(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path]
) -> None:
    sources = [make_adapter_dir(f"v{i}", weights=bytes([i]) * (10 * i)) for i in (1, 2, 3)]
    first = registry.adapters.register(tenant.id, "support", sources[0], base_model="tiny")
    second = registry.adapters.register(
        tenant.id,
        "support",
        sources[1],
        base_model="tiny",
        dataset_id="file-abc",
        job_id="ftjob-abc",
        parent_version_id=first.id,
        metrics={"eval_loss": 1.25},
    )
    third = registry.adapters.register(tenant.id, "support", sources[2], base_model="tiny")
    assert [v.number for v in (first, second, third)] == [1, 2, 3]
    for version, source in zip((first, second, third), sources, strict=True):
        assert version.sha256 == directory_sha256(source)
        assert version.bytes == directory_bytes(source)
        assert directory_sha256(registry.adapters.local_path(version)) == version.sha256
        assert registry.locate(version.id) == registry.adapters.local_path(version)
    stored = registry.adapters.version(tenant.id, "support", "v2")
    assert (stored.id, stored.dataset_id, stored.job_id) == (second.id, "file-abc", "ftjob-abc")
    assert (stored.parent_version_id, stored.metrics, stored.base_model) == (
        first.id,
        {"eval_loss": 1.25},
        "tiny",
    )
    assert [v.number for v in registry.adapters.versions(tenant.id, "support")] == [1, 2, 3]
    assert registry.adapters.get(tenant.id, "support").latest_version == 3
    assert [a.name for a in registry.adapters.all(tenant.id)] == ["support"]


def test_a_bad_adapter_name_stores_nothing(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path], artifacts_dir: Path
) -> None:
    with pytest.raises(InvalidNameError):
        registry.adapters.register(tenant.id, "../escape", make_adapter_dir(), base_model="tiny")
    assert files_under(artifacts_dir) == []


def test_resolve_by_name_version_and_alias(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    v1, v2, v3 = three_versions
    resolve = registry.adapters.resolve
    assert resolve(tenant.id, "support").id == v3.id  # no production alias: the latest
    registry.adapters.promote(tenant.id, "support", "production", 1, actor="alice")
    registry.adapters.promote(tenant.id, "support", "staging", "v2", actor="alice")
    assert resolve(tenant.id, "support").id == v1.id  # production wins over latest
    assert resolve(tenant.id, "support", version="2").id == v2.id
    assert resolve(tenant.id, "support", version="v3").id == v3.id
    assert resolve(tenant.id, "support", alias="staging").id == v2.id
    assert registry.adapters.aliases(tenant.id, "support") == {"production": 1, "staging": 2}


def test_unknown_version_or_alias_names_the_known_ones(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    registry.adapters.promote(tenant.id, "support", "staging", 2, actor="alice")
    with pytest.raises(UnknownAdapterError, match=r"no version '7' \(versions: 1, 2, 3\)"):
        registry.adapters.resolve(tenant.id, "support", version="7")
    with pytest.raises(UnknownAdapterError, match=r"no alias 'canary' \(aliases: staging\)"):
        registry.adapters.resolve(tenant.id, "support", alias="canary")
    with pytest.raises(UnknownAdapterError, match="'nope'"):
        registry.adapters.resolve(tenant.id, "nope")
    with pytest.raises(UnknownAdapterError, match="versions: 1, 2, 3"):
        registry.adapters.promote(tenant.id, "support", "production", 9, actor="alice")


def test_an_odd_version_text_is_an_unknown_version(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    for version in (
        "²",
        "99999999999999999999",
    ):  # ValueError; OverflowError (SQLite), DataError (PostgreSQL)
        with pytest.raises(UnknownAdapterError, match="versions: 1, 2, 3"):
            registry.adapters.resolve(tenant.id, "support", version=version)


def test_promote_three_then_rollback_twice_lands_on_the_first(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    v1, v2, _ = three_versions
    for number in (1, 2, 3):
        registry.adapters.promote(tenant.id, "support", "production", number, actor="alice")
    assert registry.adapters.rollback(tenant.id, "support", "production", actor="bob").id == v2.id
    assert registry.adapters.rollback(tenant.id, "support", "production", actor="bob").id == v1.id
    assert registry.adapters.resolve(tenant.id, "support").id == v1.id
    with pytest.raises(ConflictError, match="no earlier version"):
        registry.adapters.rollback(tenant.id, "support", "production", actor="bob")
    registry.adapters.promote(tenant.id, "support", "production", 3, actor="alice")
    assert registry.adapters.rollback(tenant.id, "support", "production", actor="bob").id == v1.id


def test_rollback_with_nothing_earlier_is_a_conflict(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        registry.adapters.rollback(tenant.id, "support", "production", actor="bob")
    registry.adapters.promote(tenant.id, "support", "production", 2, actor="alice")
    with pytest.raises(ConflictError, match="support:production"):
        registry.adapters.rollback(tenant.id, "support", "production", actor="bob")
    assert registry.adapters.aliases(tenant.id, "support") == {"production": 2}


def test_history_records_every_move_and_who_made_it(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    v1, v2, _ = three_versions
    registry.adapters.promote(tenant.id, "support", "production", 1, actor="alice")
    registry.adapters.promote(tenant.id, "support", "staging", 2, actor="carol")
    registry.adapters.promote(tenant.id, "support", "production", 2, actor="alice")
    registry.adapters.rollback(tenant.id, "support", "production", actor="bob")
    moves = [
        (m.alias, m.action, m.actor, m.from_version_id, m.to_version_id)
        for m in registry.adapters.history(tenant.id, "support")
    ]
    assert moves == [
        ("production", "promote", "alice", None, v1.id),
        ("staging", "promote", "carol", None, v2.id),
        ("production", "promote", "alice", v1.id, v2.id),
        ("production", "rollback", "bob", v2.id, v1.id),
    ]
    assert len(registry.adapters.history(tenant.id, "support", "staging")) == 1


def test_an_alias_name_must_be_a_plain_name(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    with pytest.raises(InvalidNameError):
        registry.adapters.promote(tenant.id, "support", "prod/../x", 1, actor="alice")


def test_delete_version_is_refused_while_an_alias_points_at_it(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    v1 = three_versions[0]
    registry.adapters.promote(tenant.id, "support", "production", 1, actor="alice")
    with pytest.raises(ConflictError, match="production"):
        registry.adapters.delete_version(tenant.id, "support", 1)
    assert registry.adapters.local_path(v1).is_dir()
    registry.adapters.promote(tenant.id, "support", "production", 2, actor="alice")
    registry.adapters.delete_version(tenant.id, "support", 1)
    assert not Path(v1.artifact).exists()
    assert [v.number for v in registry.adapters.versions(tenant.id, "support")] == [2, 3]
    with pytest.raises(UnknownAdapterError, match="versions: 2, 3"):
        registry.adapters.version(tenant.id, "support", 1)
    with pytest.raises(UnknownAdapterError):
        registry.locate(v1.id)


def test_numbers_are_never_reused(
    registry: Registry,
    tenant: Tenant,
    three_versions: list[AdapterVersion],
    make_adapter_dir: Callable[..., Path],
) -> None:
    registry.adapters.delete_version(tenant.id, "support", 3)
    fourth = registry.adapters.register(tenant.id, "support", make_adapter_dir("v4"), base_model="tiny")
    assert fourth.number == 4


def test_resolve_after_deleting_the_latest_version_gives_the_newest_left(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    registry.adapters.delete_version(tenant.id, "support", 3)
    assert registry.adapters.resolve(tenant.id, "support").id == three_versions[1].id


def test_delete_adapter_removes_versions_aliases_history_and_artifacts(
    registry: Registry, tenant: Tenant, three_versions: list[AdapterVersion], artifacts_dir: Path
) -> None:
    registry.adapters.promote(tenant.id, "support", "production", 2, actor="alice")
    assert len(files_under(artifacts_dir / "tenants" / tenant.id / "adapters")) == 9
    registry.adapters.delete(tenant.id, "support")
    assert files_under(artifacts_dir / "tenants" / tenant.id / "adapters") == []
    assert registry.adapters.all(tenant.id) == []
    with pytest.raises(UnknownAdapterError):
        registry.adapters.resolve(tenant.id, "support")
    with registry.db.session() as session:
        assert session.scalars(select(AdapterVersion)).all() == []


# --- jobs completing into versions -------------------------------------------------------------------------


@pytest.fixture
def running_job(registry: Registry, tenant: Tenant, add_dataset: Callable[..., Dataset]) -> Job:
    """A job of `support` (max_retries=1) claimed by worker-a, with metrics from its heartbeats."""
    dataset = add_dataset(tenant.id)
    registry.jobs.create(
        tenant.id, adapter_name="support", dataset_id=dataset.id, base_model="tiny", max_retries=1
    )
    job = registry.jobs.claim("worker-a")
    assert job is not None
    registry.jobs.heartbeat(job.id, "worker-a", step=3, metrics={"loss": 0.5})
    return registry.jobs.get(tenant.id, job.id)


def test_complete_job_registers_the_version_and_marks_the_job_succeeded(
    registry: Registry, tenant: Tenant, running_job: Job, make_adapter_dir: Callable[..., Path]
) -> None:
    source = make_adapter_dir()
    version = registry.complete_job(
        running_job,
        "worker-a",
        source,
        metrics={"eval_loss": 0.75},
        trained_tokens=1234,
        compute_seconds=12.5,
    )
    assert (version.number, version.job_id, version.dataset_id) == (1, running_job.id, running_job.dataset_id)
    assert version.sha256 == directory_sha256(source)
    job = registry.jobs.get(tenant.id, running_job.id)
    assert (job.status, job.version_id, job.trained_tokens) == ("succeeded", version.id, 1234)
    assert job.metrics == {"loss": 0.5, "eval_loss": 0.75}
    assert registry.jobs.events(tenant.id, job.id)[-1].message == "job succeeded"
    with registry.db.session() as session:
        training = session.scalars(select(UsageRecord).where(UsageRecord.kind == "training")).all()
        assert [(r.job_id, r.trained_tokens, r.compute_seconds) for r in training] == [(job.id, 1234, 12.5)]


def test_complete_job_after_losing_the_job_registers_nothing(
    registry: Registry,
    tenant: Tenant,
    running_job: Job,
    make_adapter_dir: Callable[..., Path],
    artifacts_dir: Path,
) -> None:
    with registry.db.session() as session:  # worker-a went silent; the job is recovered and re-claimed
        session.get_one(Job, running_job.id).heartbeat_at = 0.0
    registry.jobs.recover_stale(lease_seconds=60)
    assert registry.jobs.claim("worker-b") is not None
    with pytest.raises(ConflictError, match="worker-a"):
        registry.complete_job(
            running_job, "worker-a", make_adapter_dir(), metrics={}, trained_tokens=5, compute_seconds=1.0
        )
    assert registry.adapters.all(tenant.id) == []
    assert files_under(artifacts_dir / "tenants" / tenant.id / "adapters") == []
    with registry.db.session() as session:
        assert session.scalars(select(AdapterVersion)).all() == []
        kinds = session.scalars(select(UsageRecord.kind)).all()
    assert kinds == ["storage"]  # the dataset's upload only
    job = registry.jobs.get(tenant.id, running_job.id)
    assert (job.status, job.worker_id, job.version_id) == ("running", "worker-b", None)


def test_a_failing_transaction_deletes_the_new_artifact(
    registry: Registry, tenant: Tenant, make_adapter_dir: Callable[..., Path], artifacts_dir: Path
) -> None:
    def explode(_session: Session, _version: AdapterVersion) -> None:
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        registry.adapters.register(
            tenant.id, "support", make_adapter_dir(), base_model="tiny", in_same_transaction=explode
        )
    assert files_under(artifacts_dir) == []
    assert registry.adapters.all(tenant.id) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new-adapter", "existing-adapter"])
def test_a_registration_racing_another_gets_the_next_number(
    registry: Registry,
    tenant: Tenant,
    open_registry: Callable[[], Registry],
    make_adapter_dir: Callable[..., Path],
    existing: bool,
) -> None:
    """Two workers finish jobs of one adapter at once: one gets the next number, the other the one after.

    The second registration starts while the first is about to commit (see `contention`).
    """
    source = make_adapter_dir()
    if existing:
        registry.adapters.register(tenant.id, "support", source, base_model="tiny")
    other = open_registry()

    def contender() -> None:
        other.adapters.register(tenant.id, "support", source, base_model="tiny")

    with contend_at_commit(registry.db.engine, contender, after="INSERT INTO adapter_versions") as errors:
        registry.adapters.register(tenant.id, "support", source, base_model="tiny")
    assert errors == []
    numbers = [v.number for v in registry.adapters.versions(tenant.id, "support")]
    assert numbers == ([1, 2, 3] if existing else [1, 2])


# --- tenants and quotas ------------------------------------------------------------------------------------


def test_another_tenant_cannot_see_resolve_promote_or_delete(
    registry: Registry, tenant: Tenant, other_tenant: Tenant, three_versions: list[AdapterVersion]
) -> None:
    theirs = other_tenant.id
    assert registry.adapters.all(theirs) == []
    with pytest.raises(UnknownAdapterError):
        registry.adapters.get(theirs, "support")
    with pytest.raises(UnknownAdapterError):
        registry.adapters.versions(theirs, "support")
    with pytest.raises(UnknownAdapterError):
        registry.adapters.resolve(theirs, "support", version="1")
    with pytest.raises(UnknownAdapterError):
        registry.adapters.promote(theirs, "support", "production", 1, actor="mallory")
    with pytest.raises(UnknownAdapterError):
        registry.adapters.delete_version(theirs, "support", 1)
    with pytest.raises(UnknownAdapterError):
        registry.adapters.delete(theirs, "support")
    with pytest.raises(NotFoundError):
        registry.adapters.by_id(theirs, three_versions[0].id)
    assert registry.adapters.by_id(tenant.id, three_versions[0].id).number == 1
    assert [v.number for v in registry.adapters.versions(tenant.id, "support")] == [1, 2, 3]
    assert registry.adapters.aliases(tenant.id, "support") == {}


def test_same_adapter_name_in_two_tenants_is_two_adapters(
    registry: Registry, tenant: Tenant, other_tenant: Tenant, make_adapter_dir: Callable[..., Path]
) -> None:
    ours = registry.adapters.register(tenant.id, "support", make_adapter_dir("a", b"a"), base_model="tiny")
    theirs = registry.adapters.register(
        other_tenant.id, "support", make_adapter_dir("b", b"b"), base_model="tiny"
    )
    assert ours.number == theirs.number == 1
    assert registry.adapters.resolve(other_tenant.id, "support").id == theirs.id
    registry.adapters.delete(other_tenant.id, "support")
    assert registry.adapters.resolve(tenant.id, "support").id == ours.id
    assert registry.adapters.local_path(ours).is_dir()


def test_max_adapters_counts_names_not_versions(
    registry: Registry, make_adapter_dir: Callable[..., Path], artifacts_dir: Path
) -> None:
    tenant = registry.tenants.create("small", quotas=Quotas(max_adapters=1))
    source = make_adapter_dir()
    registry.adapters.register(tenant.id, "one", source, base_model="tiny")
    registry.adapters.register(tenant.id, "one", source, base_model="tiny")  # a version, not an adapter
    with pytest.raises(QuotaExceededError, match="quota is 1") as refused:
        registry.adapters.register(tenant.id, "two", source, base_model="tiny")
    assert refused.value.retry_after > 0
    assert len(files_under(artifacts_dir)) == 2 * len(files_under(source))
    registry.adapters.delete(tenant.id, "one")
    assert registry.adapters.register(tenant.id, "two", source, base_model="tiny").number == 1


def test_max_storage_bytes_counts_versions_and_datasets(
    registry: Registry, make_adapter_dir: Callable[..., Path], add_dataset: Callable[..., Dataset]
) -> None:
    source = make_adapter_dir()
    size = directory_bytes(source)
    tenant = registry.tenants.create("small", quotas=Quotas(max_storage_bytes=2 * size))
    registry.adapters.register(tenant.id, "one", source, base_model="tiny")
    assert add_dataset(tenant.id, rows=1).bytes < size  # so one version and the file fit, two versions don't
    with pytest.raises(QuotaExceededError, match="quota") as refused:
        registry.adapters.register(tenant.id, "one", source, base_model="tiny")
    assert refused.value.retry_after > 0
    assert [v.number for v in registry.adapters.versions(tenant.id, "one")] == [1]
    registry.adapters.delete_version(tenant.id, "one", 1)
    assert registry.adapters.register(tenant.id, "one", source, base_model="tiny").number == 2
