"""Fine-tuning jobs as a queue in the database: create, claim atomically, heartbeat, finish, recover.

Claiming: one transaction selects the oldest queued job and updates it to running *only if it is
still queued*. On PostgreSQL the select is `FOR UPDATE SKIP LOCKED`, so concurrent workers take
different jobs without waiting; on SQLite every transaction holds the write lock from its start
(`BEGIN IMMEDIATE`, see `database`), so claims are serial. Either way two workers never run one job.

A running job belongs to the worker that claimed it (`worker_id`) and stays alive by heartbeats.
`recover_stale` finds jobs whose worker stopped beating (killed, machine lost) and re-queues them
while retries are left, else fails them. A worker only finishes a job it still owns.

Cancelling a running job makes it `cancelled` at once, as OpenAI answers, while its worker still holds
the run: `cancel_requested` stays set until the worker reports the run ended (`run_stopped`, or
`release`), and its heartbeats answer "stop". The run's own end never counts: `finish` refuses a
cancelled job, so the transaction that would register its version rolls back.

Event messages are what the tenant reads (`GET …/events`): they say what happened to the job, never
which worker, host or process ran it; those go to the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lorafleet.errors import ConflictError
from lorafleet.home import validate_name
from lorafleet.registry.database import Database
from lorafleet.registry.queue import claim_oldest
from lorafleet.registry.tables import (
    FINISHED_STATES,
    Adapter,
    AdapterVersion,
    Dataset,
    Job,
    JobEvent,
    now,
    owned,
)
from lorafleet.registry.usage import check_concurrent_jobs, check_monthly_tokens, check_storage, lock_tenant

logger = logging.getLogger(__name__)


class Jobs:
    """A tenant's fine-tuning jobs and their event logs, and the queue the workers take them from."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- tenants' side ----------------------------------------------------------------------------------

    def create(
        self,
        tenant_id: str,
        *,
        adapter_name: str,
        dataset_id: str,
        base_model: str,
        recipe: dict[str, Any] | None = None,
        validation_dataset_id: str | None = None,
        parent_version_id: str | None = None,
        max_retries: int = 0,
    ) -> Job:
        """Queue a job; `NotFoundError` for another tenant's file, `QuotaExceededError` past a quota."""
        validate_name(adapter_name, what="adapter name")
        with self.db.session() as session:
            tenant = lock_tenant(session, tenant_id)
            for file_id in filter(None, (dataset_id, validation_dataset_id)):
                owned(session, Dataset, file_id, tenant_id, what="file")
            if parent_version_id is not None:
                owned(session, AdapterVersion, parent_version_id, tenant_id, what="adapter version")
            check_concurrent_jobs(session, tenant)
            check_monthly_tokens(session, tenant)
            known = session.scalar(
                select(Adapter.id).where(Adapter.tenant_id == tenant_id, Adapter.name == adapter_name)
            )
            check_storage(session, tenant, new_bytes=0, new_adapter=known is None)
            job = Job(
                tenant_id=tenant_id,
                adapter_name=adapter_name,
                dataset_id=dataset_id,
                validation_dataset_id=validation_dataset_id,
                base_model=base_model,
                recipe=recipe or {},
                parent_version_id=parent_version_id,
                max_retries=max_retries,
            )
            session.add(job)
            session.flush()
            _event(session, job, f"job created for adapter {adapter_name!r}", type="status")
        return job

    def get(self, tenant_id: str, job_id: str) -> Job:
        with self.db.session() as session:
            return _owned(session, tenant_id, job_id)

    def all(self, tenant_id: str, *, limit: int = 20, after: str | None = None) -> list[Job]:
        """Newest first; `after` is the id of the last job of the previous page."""
        with self.db.session() as session:
            query = select(Job).where(Job.tenant_id == tenant_id)
            if after is not None:
                query = query.where(Job.created_at < _owned(session, tenant_id, after).created_at)
            return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit)))

    def events(
        self,
        tenant_id: str,
        job_id: str,
        *,
        after: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[JobEvent]:
        """The job's events, oldest first from after event id `after` (or newest first, older than it)."""
        with self.db.session() as session:
            _owned(session, tenant_id, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if after is not None:
                query = query.where(JobEvent.id < after if newest_first else JobEvent.id > after)
            order = JobEvent.id.desc() if newest_first else JobEvent.id
            return list(session.scalars(query.order_by(order).limit(limit)))

    def add_event(
        self, tenant_id: str, job_id: str, message: str, *, data: dict[str, Any] | None = None
    ) -> None:
        """Add a line to the job's event stream (what happened to it after it ran, say)."""
        with self.db.session() as session:
            _event(session, _owned(session, tenant_id, job_id), message, data=data)

    def cancel(self, tenant_id: str, job_id: str) -> Job:
        """Cancel a queued or running job at once (`ConflictError` for a finished one).

        A running job's worker sees the cancellation at its next heartbeat and stops the run; nothing the
        run produces afterwards is registered.
        """
        with self.db.session() as session:
            session.get(Job, job_id, with_for_update=True)  # a worker finishing it waits, or goes first
            job = _owned(session, tenant_id, job_id)
            if job.status in FINISHED_STATES:
                raise ConflictError(f"job {job_id} already {job.status}; nothing to cancel")
            running = job.status == "running"
            job.status, job.finished_at = "cancelled", now()
            if running:
                job.cancel_requested = True  # until the worker reports the run stopped
                _event(session, job, "job cancelled; its run is being stopped", type="status")
            else:
                _event(session, job, "job cancelled before it started", type="status")
        return job

    # --- workers' side ----------------------------------------------------------------------------------

    def claim(self, worker_id: str) -> Job | None:
        """Take the oldest queued job for `worker_id`, or None when the queue is empty."""
        moment = now()
        values = {
            "status": "running",
            "worker_id": worker_id,
            "attempts": Job.attempts + 1,
            "started_at": moment,
            "heartbeat_at": moment,
        }

        def started(session: Session, job: Job) -> None:
            _event(session, job, f"job started (attempt {job.attempts})", type="status")

        return claim_oldest(self.db, Job, values, taken=started)

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        metrics: dict[str, Any] | None = None,
        events: Sequence[tuple[str, str, dict[str, Any] | None]] = (),
    ) -> bool:
        """Record progress (and `(type, message, data)` events); return whether the run must stop.

        True once the job was cancelled (its run is stopping: late progress and events still land).
        `ConflictError` when the worker no longer owns the run (it was recovered as stale).
        """
        with self.db.session() as session:
            job = _run_of(session, job_id, worker_id)
            job.heartbeat_at = now()
            if step is not None:
                job.step = step
            if total_steps is not None:
                job.total_steps = total_steps
            if metrics:
                job.metrics = {**job.metrics, **metrics}
            for kind, message, data in events:
                _event(session, job, message, type=kind, data=data)
            return job.status == "cancelled" or job.cancel_requested

    def finish(
        self,
        job_id: str,
        worker_id: str,
        status: str,
        *,
        error: str | None = None,
        session: Session | None = None,
        **fields: Any,
    ) -> None:
        """Mark an owned job `succeeded`, `failed` or `cancelled` (inside `session` when given).

        `ConflictError` for a job cancelled while its run went on (the run's end does not count, and a
        transaction registering its adapter rolls back): record with `run_stopped` that the run ended.
        """
        if status not in FINISHED_STATES:
            raise ValueError(f"status {status!r} is not one of {FINISHED_STATES}")
        if session is None:
            with self.db.session() as own:
                self.finish(job_id, worker_id, status, error=error, session=own, **fields)
            return
        job = _run_of(session, job_id, worker_id)
        if job.status == "cancelled":
            raise ConflictError(f"job {job_id} was cancelled; its run's end ({status}) does not count")
        job.status, job.error, job.finished_at, job.heartbeat_at = status, error, now(), now()
        job.metrics = {**job.metrics, **fields.pop("metrics", {})}  # onto what the heartbeats stored
        for name, value in fields.items():
            setattr(job, name, value)
        message = f"job {status}" + (f": {error}" if error else "")
        _event(session, job, message, type="status", level="error" if status == "failed" else "info")

    def run_stopped(self, job_id: str, worker_id: str) -> None:
        """Record that the run of a job cancelled while running has ended (nothing was registered).

        `ConflictError` unless the job is cancelled and the run was `worker_id`'s.
        """
        with self.db.session() as session:
            job = _run_of(session, job_id, worker_id)
            if job.status != "cancelled":
                raise ConflictError(f"job {job_id} is {job.status}, not cancelled")
            job.cancel_requested, job.heartbeat_at = False, now()
            _event(session, job, "run stopped; no adapter version was registered")

    def release(self, job_id: str, worker_id: str, reason: str) -> str:
        """Put an owned running job back in the queue (its worker is stopping); the try is not counted.

        `reason` is for the tenant (no worker names). A job cancelled meanwhile stays cancelled. The job's
        status afterwards: "queued" or "cancelled".
        """
        with self.db.session() as session:
            job = _run_of(session, job_id, worker_id)
            if job.status == "cancelled":
                job.cancel_requested = False
                _event(session, job, f"{reason}; run stopped")
                return job.status
            if job.cancel_requested:  # asked to stop by a server from before cancellation was immediate
                job.status, job.finished_at, job.cancel_requested = "cancelled", now(), False
                _event(session, job, f"{reason}; the job was being cancelled", type="status")
                return job.status
            job.status, job.worker_id, job.step, job.attempts = "queued", None, 0, job.attempts - 1
            _event(session, job, f"{reason}; re-queued", type="status", level="warning")
            return job.status

    def recover_stale(self, *, lease_seconds: float) -> list[Job]:
        """Re-queue (retries left) or fail running jobs with no heartbeat for `lease_seconds`.

        A cancelled job whose run was still stopping when its worker went quiet needs nothing: it is
        cancelled already, and the run died with its worker.
        """
        cutoff = now() - lease_seconds
        recovered = []
        with self.db.session() as session:
            stale = session.scalars(
                select(Job)
                .where(Job.status == "running", Job.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)
            ).all()
            for job in stale:
                logger.warning(
                    "job %s: worker %s sent no heartbeat for %g s; recovering the job",
                    job.id,
                    job.worker_id,
                    lease_seconds,
                )
                lost = f"its worker stopped responding (no heartbeat for {lease_seconds:g} s)"
                if job.cancel_requested:  # asked to stop by a server from before cancellation was immediate
                    job.status, job.finished_at, job.cancel_requested = "cancelled", now(), False
                    _event(session, job, f"{lost}; the job was being cancelled", type="status")
                elif job.attempts <= job.max_retries:
                    job.status, job.worker_id, job.step = "queued", None, 0
                    _event(
                        session,
                        job,
                        f"{lost}; re-queued (attempt {job.attempts} of {job.max_retries + 1})",
                        type="status",
                        level="warning",
                    )
                else:
                    job.status, job.finished_at = "failed", now()
                    job.error = f"{lost}; no retries left"
                    _event(session, job, f"job failed: {job.error}", type="status", level="error")
                recovered.append(job)
        return recovered

    def active_count(self, tenant_id: str | None = None) -> int:
        with self.db.session() as session:
            query = select(func.count()).select_from(Job).where(Job.status.in_(("queued", "running")))
            if tenant_id is not None:
                query = query.where(Job.tenant_id == tenant_id)
            return int(session.scalar(query) or 0)


def _owned(session: Session, tenant_id: str, job_id: str) -> Job:
    return owned(session, Job, job_id, tenant_id, what="fine-tuning job")


def _run_of(session: Session, job_id: str, worker_id: str) -> Job:
    """The job whose run `worker_id` holds, locked; `ConflictError` once the worker no longer holds it."""
    job = session.get(Job, job_id, with_for_update=True)
    stopping = job is not None and job.status == "cancelled" and job.cancel_requested
    if job is None or job.worker_id != worker_id or not (job.status == "running" or stopping):
        state = "missing" if job is None else f"{job.status} on {job.worker_id}"
        raise ConflictError(f"job {job_id} is no longer running on worker {worker_id} ({state})")
    return job


def _event(
    session: Session,
    job: Job,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        JobEvent(job_id=job.id, tenant_id=job.tenant_id, message=message, type=type, level=level, data=data)
    )
