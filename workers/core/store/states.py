"""A job's states and records, and the one function every state change goes through.

``queued -> running -> succeeded | failed | cancelled``, with ``cancelling`` between running and
cancelled. Each change is one conditional UPDATE (``WHERE state IN ...``), so the API's cancel and a
worker's progress never overwrite each other; each bumps ``version``, the job's ETag.

A running job is held by one attempt (``attempts`` numbers them) that renews a lease (``heartbeat_at``).
The worker's writes are conditional on its attempt, so an attempt presumed lost can no longer touch the
job; a job whose lease lapsed is settled by ``recover_lost_attempts`` (requeued, failed or cancelled).
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from workers.core.store.tables import JobRow


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class CallbackState(StrEnum):
    pending = "pending"  # to be sent once the job has ended (again after a failed try)
    delivered = "delivered"
    failed = "failed"  # given up on, or refused


HELD_STATES = frozenset({JobState.running, JobState.cancelling})  # an attempt holds the job
HELD_VALUES = [state.value for state in HELD_STATES]
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE_STATES = frozenset({JobState.queued, JobState.running, JobState.cancelling})


@dataclass(frozen=True)
class JobResult:
    report_sha256: str
    report_size: int
    archive_sha256: str
    archive_size: int


@dataclass(frozen=True)
class Callback:
    url: str
    state: CallbackState
    attempts: int
    error: str | None
    next_at: datetime | None


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    tenant: str
    state: JobState
    queue: str
    request: dict[str, Any]
    request_hash: str
    idempotency_key: str | None
    attempts: int
    attempt_started_at: datetime | None
    heartbeat_at: datetime | None
    version: int
    progress_phase: str | None
    progress_done: int
    progress_total: int
    error: dict[str, Any] | None
    result: JobResult | None
    created_at: datetime
    updated_at: datetime
    timestamps: dict[JobState, datetime]
    callback: Callback | None = None


class WrongState(Exception):
    """The job is not in a state that allows the change; carries the job as it is."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.state}")
        self.job = job


def utc(stamp: datetime) -> datetime:
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def utc_now() -> datetime:
    return datetime.now(UTC)


def job_record(row: JobRow) -> Job:
    result = None
    if row.report_sha256 and row.archive_sha256:
        result = JobResult(row.report_sha256, row.report_size or 0, row.archive_sha256, row.archive_size or 0)
    stamps = {state: getattr(row, f"{state.value}_at") for state in JobState}
    return Job(
        seq=row.seq,
        id=row.id,
        tenant=row.tenant,
        state=JobState(row.state),
        queue=row.queue,
        request=json.loads(row.request),
        request_hash=row.request_hash,
        idempotency_key=row.idempotency_key,
        attempts=row.attempts,
        attempt_started_at=row.attempt_started_at,
        heartbeat_at=row.heartbeat_at,
        version=row.version,
        progress_phase=row.progress_phase,
        progress_done=row.progress_done,
        progress_total=row.progress_total,
        error=None if row.error is None else json.loads(row.error),
        result=result,
        created_at=row.created_at,
        updated_at=row.updated_at,
        timestamps={state: stamp for state, stamp in stamps.items() if stamp is not None},
        callback=None
        if row.callback_url is None
        else Callback(
            row.callback_url,
            CallbackState(row.callback_state),
            row.callback_attempts,
            row.callback_error,
            row.callback_next_at,
        ),
    )


class JobTable:
    """What every part of the job store shares: its sessions, reading a job, and the one state-transition
    function (a conditional UPDATE that bumps the version)."""

    def __init__(self, session: sessionmaker[Session]) -> None:
        self._session = session

    def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job; with ``tenant``, only if it belongs to that tenant (the API never passes ``None``)."""
        query = select(JobRow).where(JobRow.id == job_id)
        if tenant is not None:
            query = query.where(JobRow.tenant == tenant)
        with self._session() as session:
            row = session.scalar(query)
            return None if row is None else job_record(row)

    def _transition(
        self, job_id: str, sources: Iterable[JobState], values: dict[str, Any], *conditions: Any
    ) -> bool:
        """One conditional UPDATE: the job must be in one of ``sources`` and meet ``conditions``."""
        statement = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state.in_([s.value for s in sources]), *conditions)
            .values(**values, version=JobRow.version + 1, updated_at=utc_now())
        )
        with self._session.begin() as session:
            return rowcount(session, statement) == 1


def terminal_values(
    state: JobState, error: dict[str, Any] | None = None, result: JobResult | None = None
) -> dict[str, Any]:
    assert state in TERMINAL_STATES
    values: dict[str, Any] = {"state": state.value, f"{state.value}_at": utc_now()}
    if error is not None:
        values["error"] = json.dumps(error)
    if result is not None:
        values |= {
            "report_sha256": result.report_sha256,
            "report_size": result.report_size,
            "archive_sha256": result.archive_sha256,
            "archive_size": result.archive_size,
        }
    return values


def rowcount(session: Session, statement: Any) -> int:
    return session.execute(statement).rowcount  # type: ignore[attr-defined]
