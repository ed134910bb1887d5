"""The job queue: the lifecycle with its event log, atomic claims, cancellation, recovery, ownership."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from lorafleet.errors import ConflictError, NotFoundError, QuotaExceededError
from lorafleet.registry import Quotas, Registry
from lorafleet.registry.tables import Dataset, Job, Tenant, UsageRecord
from tests.registry.contention import contend_at_commit


@pytest.fixture
def dataset(tenant: Tenant, add_dataset: Callable[..., Dataset]) -> Dataset:
    return add_dataset(tenant.id)


@pytest.fixture
def queue(registry: Registry, tenant: Tenant, dataset: Dataset) -> Callable[..., Job]:
    """`queue(adapter_name="support", max_retries=0)`: create a job of `tenant` on `dataset`."""

    def create(adapter_name: str = "support", max_retries: int = 0) -> Job:
        return registry.jobs.create(
            tenant.id,
            adapter_name=adapter_name,
            dataset_id=dataset.id,
            base_model="tiny-llama",
            recipe={"training": {"max_steps": 3}},
            max_retries=max_retries,
        )

    return create


def make_stale(registry: Registry, job_id: str) -> None:
    """Pretend the job's worker stopped beating an hour ago."""
    with registry.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=Job.heartbeat_at - 3600))


def test_create_claim_heartbeat_finish_with_events_in_order(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue()
    assert (job.status, job.attempts, job.recipe) == ("queued", 0, {"training": {"max_steps": 3}})
    claimed = registry.jobs.claim("worker-a")
    assert claimed is not None and claimed.id == job.id
    assert (claimed.status, claimed.worker_id, claimed.attempts) == ("running", "worker-a", 1)
    assert claimed.started_at is not None and claimed.heartbeat_at is not None

    cancel = registry.jobs.heartbeat(
        job.id,
        "worker-a",
        step=1,
        total_steps=3,
        metrics={"loss": 2.5},
        events=[("metrics", "step 1", {"loss": 2.5}), ("message", "hello from training", None)],
    )
    assert cancel is False
    registry.jobs.heartbeat(job.id, "worker-a", step=2, metrics={"accuracy": 0.5})
    registry.jobs.finish(job.id, "worker-a", "succeeded", trained_tokens=123)

    done = registry.jobs.get(tenant.id, job.id)
    assert (done.status, done.step, done.total_steps, done.trained_tokens) == ("succeeded", 2, 3, 123)
    assert done.metrics == {"loss": 2.5, "accuracy": 0.5}
    assert done.finished_at is not None and done.error is None
    events = registry.jobs.events(tenant.id, job.id)
    assert [(e.type, e.message) for e in events] == [
        ("status", "job created for adapter 'support'"),
        ("status", "job started (attempt 1)"),
        ("metrics", "step 1"),
        ("message", "hello from training"),
        ("status", "job succeeded"),
    ]
    assert events[2].data == {"loss": 2.5}
    assert [e.id for e in events] == sorted(e.id for e in events)
    later = registry.jobs.events(tenant.id, job.id, after=events[2].id)
    assert [e.id for e in later] == [events[3].id, events[4].id]


def test_failed_job_keeps_its_error(registry: Registry, tenant: Tenant, queue: Callable[..., Job]) -> None:
    job = queue()
    registry.jobs.claim("worker-a")
    registry.jobs.finish(job.id, "worker-a", "failed", error="loss became NaN at step 7")
    done = registry.jobs.get(tenant.id, job.id)
    assert (done.status, done.error) == ("failed", "loss became NaN at step 7")
    last = registry.jobs.events(tenant.id, job.id)[-1]
    assert (last.level, last.message) == ("error", "job failed: loss became NaN at step 7")
    with pytest.raises(ValueError, match="running"):
        registry.jobs.finish(job.id, "worker-a", "running")


def test_claim_on_an_empty_queue_is_none(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    assert registry.jobs.claim("worker-a") is None
    job = queue()
    registry.jobs.cancel(tenant.id, job.id)
    assert registry.jobs.claim("worker-a") is None  # a cancelled job is not work


def test_claims_take_the_oldest_job_first(registry: Registry, queue: Callable[..., Job]) -> None:
    jobs = [queue(f"adapter-{i}") for i in range(4)]
    claimed = [registry.jobs.claim("worker-a") for _ in jobs]
    assert [job.id for job in claimed if job is not None] == [job.id for job in jobs]
    assert registry.jobs.claim("worker-a") is None


def test_another_tenants_job_and_file_are_not_found(
    registry: Registry, tenant: Tenant, other_tenant: Tenant, dataset: Dataset, queue: Callable[..., Job]
) -> None:
    job = queue()
    with pytest.raises(NotFoundError, match=dataset.id):
        registry.jobs.create(other_tenant.id, adapter_name="x", dataset_id=dataset.id, base_model="tiny")
    with pytest.raises(NotFoundError):
        registry.jobs.create(
            tenant.id,
            adapter_name="x",
            dataset_id=dataset.id,
            validation_dataset_id="file-nope",
            base_model="t",
        )
    for call in (registry.jobs.get, registry.jobs.cancel, registry.jobs.events):
        with pytest.raises(NotFoundError):
            call(other_tenant.id, job.id)
    assert registry.jobs.all(other_tenant.id) == []
    assert [j.id for j in registry.jobs.all(tenant.id)] == [job.id]


def test_a_parent_version_of_another_tenant_is_not_found(
    registry: Registry,
    tenant: Tenant,
    other_tenant: Tenant,
    dataset: Dataset,
    make_adapter_dir: Callable[..., Path],
) -> None:
    theirs = registry.adapters.register(other_tenant.id, "private", make_adapter_dir(), base_model="tiny")
    for parent in (theirs.id, "av-does-not-exist"):
        with pytest.raises(NotFoundError):
            registry.jobs.create(
                tenant.id,
                adapter_name="x",
                dataset_id=dataset.id,
                base_model="tiny",
                parent_version_id=parent,
            )


def test_list_pages_newest_first(registry: Registry, tenant: Tenant, queue: Callable[..., Job]) -> None:
    jobs = [queue(f"adapter-{i}") for i in range(5)]
    newest_first = [job.id for job in reversed(jobs)]
    first = registry.jobs.all(tenant.id, limit=2)
    second = registry.jobs.all(tenant.id, limit=2, after=first[-1].id)
    third = registry.jobs.all(tenant.id, limit=2, after=second[-1].id)
    assert [j.id for j in first + second + third] == newest_first


# --- concurrent claims -------------------------------------------------------------------------------------

_CLAIMER = """
import json, sys
from lorafleet.registry import Registry
registry = Registry(sys.argv[1], artifacts_url=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()  # go
claimed = []
while (job := registry.jobs.claim(sys.argv[3])) is not None:
    claimed.append(job.id)
print(json.dumps(claimed), flush=True)
"""


def claim_concurrently(
    registries: list[Registry], database_url: str, artifacts_dir: Path, processes: int = 0
) -> dict[str, list[str]]:
    """Every registry claims in a thread of its own, and `processes` claim in processes, all at once,
    until the queue is empty; return the job ids each worker claimed."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, database_url, str(artifacts_dir), f"process-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    start = threading.Barrier(len(registries) + 1)
    claimed: dict[str, list[str]] = {f"thread-{i}": [] for i in range(len(registries))}

    def claim_all(registry: Registry, worker_id: str) -> None:
        start.wait()
        while (job := registry.jobs.claim(worker_id)) is not None:
            claimed[worker_id].append(job.id)

    threads = [
        threading.Thread(target=claim_all, args=(one, f"thread-{i}"), daemon=True)
        for i, one in enumerate(registries)
    ]
    for thread in threads:
        thread.start()
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    start.wait()
    for thread in threads:
        thread.join(timeout=60)
    for i, worker in enumerate(workers):
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        claimed[f"process-{i}"] = json.loads(output)
    return claimed


def assert_claimed_once(
    registry: Registry, tenant: Tenant, jobs: list[Job], claimed: dict[str, list[str]]
) -> None:
    counts = Counter(job_id for ids in claimed.values() for job_id in ids)
    assert counts == Counter(job.id for job in jobs)  # every job once, none twice
    owners = {job_id: worker for worker, ids in claimed.items() for job_id in ids}
    for job in jobs:
        stored = registry.jobs.get(tenant.id, job.id)
        assert (stored.status, stored.worker_id, stored.attempts) == ("running", owners[job.id], 1)


def test_concurrent_claims_never_give_one_job_twice(
    registry: Registry,
    tenant: Tenant,
    queue: Callable[..., Job],
    open_registry: Callable[[], Registry],
    database_url: str,
    artifacts_dir: Path,
) -> None:
    jobs = [queue(f"adapter-{i}") for i in range(20)]
    registries = [open_registry() for _ in range(4)]  # opened one by one: see test_schema's thread test
    claimed = claim_concurrently(registries, database_url, artifacts_dir)
    assert_claimed_once(registry, tenant, jobs, claimed)


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_claims_from_processes_and_threads_on_sqlite_never_give_one_job_twice(
    registry: Registry,
    tenant: Tenant,
    queue: Callable[..., Job],
    open_registry: Callable[[], Registry],
    database_url: str,
    artifacts_dir: Path,
) -> None:
    """SQLite is shared by processes through its file lock (`BEGIN IMMEDIATE`), not by a server."""
    jobs = [queue(f"adapter-{i}") for i in range(20)]
    registries = [open_registry() for _ in range(2)]
    claimed = claim_concurrently(registries, database_url, artifacts_dir, processes=2)
    assert_claimed_once(registry, tenant, jobs, claimed)


# --- cancellation ------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_at_once(registry: Registry, tenant: Tenant, queue: Callable[..., Job]) -> None:
    job = queue()
    cancelled = registry.jobs.cancel(tenant.id, job.id)
    assert (cancelled.status, cancelled.finished_at is not None) == ("cancelled", True)
    assert registry.jobs.get(tenant.id, job.id).status == "cancelled"
    assert registry.jobs.active_count(tenant.id) == 0


def test_cancel_a_running_job_answers_cancelled_at_once_and_its_run_never_counts(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue()
    registry.jobs.claim("worker-a")
    cancelled = registry.jobs.cancel(tenant.id, job.id)
    assert (cancelled.status, cancelled.finished_at is not None) == ("cancelled", True)
    assert registry.jobs.get(tenant.id, job.id).status == "cancelled"
    assert registry.jobs.active_count(tenant.id) == 0
    with pytest.raises(ConflictError, match="already cancelled"):
        registry.jobs.cancel(tenant.id, job.id)

    # The worker learns it at its next heartbeat; what the run reports while stopping still lands.
    assert (
        registry.jobs.heartbeat(job.id, "worker-a", step=4, events=[("message", "run stopped", None)]) is True
    )
    for end in ("succeeded", "failed", "cancelled"):  # the run's own end does not count
        with pytest.raises(ConflictError, match="was cancelled"):
            registry.jobs.finish(job.id, "worker-a", end, error="late")
    with pytest.raises(ConflictError):
        registry.jobs.run_stopped(job.id, "worker-b")  # not its run
    registry.jobs.run_stopped(job.id, "worker-a")

    stored = registry.jobs.get(tenant.id, job.id)
    assert (stored.status, stored.step, stored.error, stored.cancel_requested) == (
        "cancelled",
        4,
        None,
        False,
    )
    assert stored.finished_at == cancelled.finished_at
    with pytest.raises(ConflictError):  # the run is over: nothing more from its worker
        registry.jobs.heartbeat(job.id, "worker-a")
    assert [(e.type, e.message) for e in registry.jobs.events(tenant.id, job.id)][2:] == [
        ("status", "job cancelled; its run is being stopped"),
        ("message", "run stopped"),
        ("message", "run stopped; no adapter version was registered"),
    ]


def test_a_cancelled_jobs_adapter_is_never_registered(
    registry: Registry,
    tenant: Tenant,
    queue: Callable[..., Job],
    make_adapter_dir: Callable[..., Path],
    artifacts_dir: Path,
) -> None:
    """The race: the run completes just as the job is cancelled; the completing transaction sees it."""
    job = queue()
    claimed = registry.jobs.claim("worker-a")
    assert claimed is not None
    registry.jobs.cancel(tenant.id, job.id)

    with pytest.raises(ConflictError, match="was cancelled"):
        registry.complete_job(
            claimed, "worker-a", make_adapter_dir(), metrics={}, trained_tokens=10, compute_seconds=1.0
        )

    assert registry.jobs.get(tenant.id, job.id).status == "cancelled"
    assert registry.adapters.all(tenant.id) == []
    assert not list((artifacts_dir / "tenants" / tenant.id).glob("adapters/**/*.safetensors"))
    with registry.db.session() as session:  # neither the adapter's storage nor the training was billed
        billed = select(func.count()).select_from(UsageRecord).where(UsageRecord.job_id == job.id)
        assert session.scalar(billed) == 0


def test_run_stopped_is_only_for_a_cancelled_job(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue()
    registry.jobs.claim("worker-a")
    with pytest.raises(ConflictError, match="running, not cancelled"):
        registry.jobs.run_stopped(job.id, "worker-a")
    assert registry.jobs.get(tenant.id, job.id).status == "running"


def test_cancel_a_finished_job_is_a_conflict(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    for status in ("succeeded", "failed", "cancelled"):
        job = queue()
        registry.jobs.claim("worker-a")
        registry.jobs.finish(job.id, "worker-a", status)
        with pytest.raises(ConflictError, match=status):
            registry.jobs.cancel(tenant.id, job.id)


def test_release_of_a_cancelled_job_keeps_it_cancelled(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue()
    registry.jobs.claim("worker-a")
    registry.jobs.cancel(tenant.id, job.id)
    assert registry.jobs.release(job.id, "worker-a", "the worker is shutting down") == "cancelled"
    stored = registry.jobs.get(tenant.id, job.id)
    assert (stored.status, stored.cancel_requested) == ("cancelled", False)
    assert registry.jobs.events(tenant.id, job.id)[-1].message == "the worker is shutting down; run stopped"
    assert registry.jobs.claim("worker-b") is None


# --- recovery and ownership --------------------------------------------------------------------------------


def test_recover_stale_requeues_then_fails_when_retries_run_out(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue(max_retries=1)
    registry.jobs.claim("worker-a")
    assert registry.jobs.recover_stale(lease_seconds=60) == []  # it beat just now
    make_stale(registry, job.id)
    recovered = registry.jobs.recover_stale(lease_seconds=60)
    assert [(j.id, j.status) for j in recovered] == [(job.id, "queued")]
    stored = registry.jobs.get(tenant.id, job.id)
    assert (stored.status, stored.worker_id, stored.attempts) == ("queued", None, 1)

    again = registry.jobs.claim("worker-b")
    assert again is not None and (again.id, again.attempts) == (job.id, 2)
    make_stale(registry, job.id)
    assert [(j.id, j.status) for j in registry.jobs.recover_stale(lease_seconds=60)] == [(job.id, "failed")]
    failed = registry.jobs.get(tenant.id, job.id)
    assert failed.status == "failed" and "no retries left" in (failed.error or "")
    assert failed.finished_at is not None
    assert registry.jobs.claim("worker-c") is None


def test_recover_stale_leaves_a_cancelled_job_alone(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue(max_retries=3)
    registry.jobs.claim("worker-a")
    registry.jobs.cancel(tenant.id, job.id)
    make_stale(registry, job.id)
    assert (
        registry.jobs.recover_stale(lease_seconds=60) == []
    )  # cancelled already; its run died with the worker
    assert registry.jobs.get(tenant.id, job.id).status == "cancelled"
    assert registry.jobs.claim("worker-b") is None


def test_recover_stale_tells_the_tenant_no_worker_names(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job], caplog: pytest.LogCaptureFixture
) -> None:
    job = queue(max_retries=0)
    registry.jobs.claim("host-7-worker-a")
    make_stale(registry, job.id)
    registry.jobs.recover_stale(lease_seconds=60)
    failed = registry.jobs.get(tenant.id, job.id)
    assert failed.error == "its worker stopped responding (no heartbeat for 60 s); no retries left"
    assert not any("host-7" in e.message for e in registry.jobs.events(tenant.id, job.id))
    assert f"job {job.id}: worker host-7-worker-a sent no heartbeat" in caplog.text  # the server log


def test_release_requeues_without_counting_the_attempt(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue()
    registry.jobs.claim("worker-a")
    registry.jobs.heartbeat(job.id, "worker-a", step=5)
    registry.jobs.release(job.id, "worker-a", "worker shutting down")
    stored = registry.jobs.get(tenant.id, job.id)
    assert (stored.status, stored.worker_id, stored.attempts, stored.step) == ("queued", None, 0, 0)
    again = registry.jobs.claim("worker-b")
    assert again is not None and (again.id, again.attempts, again.worker_id) == (job.id, 1, "worker-b")
    assert "worker shutting down; re-queued" in [e.message for e in registry.jobs.events(tenant.id, job.id)]


def test_a_worker_that_lost_its_job_cannot_touch_it(
    registry: Registry, tenant: Tenant, queue: Callable[..., Job]
) -> None:
    job = queue(max_retries=1)
    registry.jobs.claim("worker-a")
    make_stale(registry, job.id)
    registry.jobs.recover_stale(lease_seconds=60)
    with pytest.raises(ConflictError, match="worker-a"):  # queued now, owned by nobody
        registry.jobs.heartbeat(job.id, "worker-a", step=3)
    registry.jobs.claim("worker-b")
    with pytest.raises(ConflictError, match="worker-a"):
        registry.jobs.heartbeat(job.id, "worker-a", step=3)
    with pytest.raises(ConflictError):
        registry.jobs.finish(job.id, "worker-a", "succeeded")
    with pytest.raises(ConflictError):
        registry.jobs.release(job.id, "worker-a", "shutting down")
    assert registry.jobs.heartbeat(job.id, "worker-b", step=1) is False
    stored = registry.jobs.get(tenant.id, job.id)
    assert (stored.status, stored.worker_id, stored.step) == ("running", "worker-b", 1)
    with pytest.raises(ConflictError):
        registry.jobs.heartbeat("ftjob-missing", "worker-b")


def test_concurrent_jobs_quota(registry: Registry, tenant: Tenant, queue: Callable[..., Job]) -> None:
    registry.tenants.set_quotas(tenant.id, Quotas(max_concurrent_jobs=2))
    first, _ = queue("one"), queue("two")
    registry.jobs.claim("worker-a")  # running counts as well as queued
    with pytest.raises(QuotaExceededError, match="quota is 2") as refused:
        queue("three")
    assert refused.value.retry_after > 0
    assert registry.jobs.active_count(tenant.id) == 2
    registry.jobs.finish(first.id, "worker-a", "succeeded")
    assert queue("three").status == "queued"


def test_concurrent_jobs_quota_holds_for_two_replicas_creating_at_once(
    registry: Registry,
    tenant: Tenant,
    dataset: Dataset,
    open_registry: Callable[[], Registry],
    queue: Callable[..., Job],
) -> None:
    """Another replica creates a job while this one's creation, which took the last place, is about to
    commit: it waits for that commit (the tenant's row is locked) and is refused, not let in too."""
    registry.tenants.set_quotas(tenant.id, Quotas(max_concurrent_jobs=2))
    queue("one")
    other = open_registry()

    def contender() -> None:
        other.jobs.create(tenant.id, adapter_name="three", dataset_id=dataset.id, base_model="tiny-llama")

    with contend_at_commit(registry.db.engine, contender, after="INSERT INTO jobs") as errors:
        queue("two")
    assert [type(error) for error in errors] == [QuotaExceededError]
    assert registry.jobs.active_count(tenant.id) == 2
