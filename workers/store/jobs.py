"""Job and artifact records, and every state change a job goes through.

``queued -> running -> succeeded | failed | cancelled``, with ``cancelling`` between running and
cancelled. Each change is one conditional UPDATE (``WHERE state IN ...``), so the API's cancel and a
worker's progress never overwrite each other; each bumps ``version``, the job's ETag.

A running job is held by one attempt (``attempts`` numbers them) that renews a lease (``heartbeat_at``).
The worker's writes are conditional on its attempt, so an attempt presumed lost can no longer touch the
job; a job whose lease lapsed is settled by ``recover_lost_attempts`` (requeued, failed or cancelled).
"""

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workers.problems import WORKER_LOST
from workers.store.database import PollConnection
from workers.store.tables import ArtifactRow, JobRow, UnitRow


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
_HELD_VALUES = [state.value for state in HELD_STATES]
TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE_STATES = frozenset({JobState.queued, JobState.running, JobState.cancelling})


@dataclass(frozen=True)
class Artifact:
    tenant: str
    sha256: str
    kind: str
    format: str
    size_bytes: int
    details: dict[str, Any]
    created_at: datetime


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


def _utc(stamp: datetime) -> datetime:
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


def _now() -> datetime:
    return datetime.now(UTC)


def _job(row: JobRow) -> Job:
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


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        row.tenant, row.sha256, row.kind, row.format, row.size_bytes, json.loads(row.details), row.created_at
    )


POLL_QUERY = f"SELECT version FROM {JobRow.__tablename__} WHERE id = %s AND tenant = %s"


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        # polls read the version on the API's event loop; SQLite (local, no server) in a thread
        self._polls = PollConnection(engine) if engine.dialect.name == "postgresql" else None

    def close(self) -> None:
        self.engine.dispose()

    async def aclose(self) -> None:
        """Also the asyncio pool of the polls, on the event loop that used it."""
        if self._polls is not None:
            await self._polls.close()
        self.close()

    # --- artifacts -------------------------------------------------------------------------------------

    def add_artifact(
        self, tenant: str, sha256: str, kind: str, format: str, size_bytes: int, details: dict[str, Any]
    ) -> tuple[Artifact, bool]:
        """Record a tenant's artifact; ``False`` when the tenant recorded these bytes as this kind before."""
        existing = self.get_artifact(tenant, sha256, kind)
        if existing is not None:
            return existing, False
        row = ArtifactRow(
            tenant=tenant,
            sha256=sha256,
            kind=kind,
            format=format,
            size_bytes=size_bytes,
            details=json.dumps(details),
            created_at=_now(),
        )
        try:
            with self._session.begin() as session:
                session.add(row)
        except IntegrityError:  # the same file, uploaded concurrently
            raced = self.get_artifact(tenant, sha256, kind)
            assert raced is not None
            return raced, False
        return _artifact(row), True

    def get_artifact(self, tenant: str, sha256: str, kind: str) -> Artifact | None:
        with self._session() as session:
            row = session.get(ArtifactRow, (tenant, sha256, kind))
            return None if row is None else _artifact(row)

    def stored_bytes(self, tenant: str) -> int:
        """What the tenant keeps: its uploads (each counted once per kind) and its audits' results."""
        uploads = select(func.coalesce(func.sum(ArtifactRow.size_bytes), 0)).where(
            ArtifactRow.tenant == tenant
        )
        results = select(
            func.coalesce(
                func.sum(func.coalesce(JobRow.report_size, 0) + func.coalesce(JobRow.archive_size, 0)), 0
            )
        ).where(JobRow.tenant == tenant)
        with self._session() as session:
            return int(session.scalar(uploads) or 0) + int(session.scalar(results) or 0)

    def delete_unused_artifacts(self, created_before: datetime) -> list[str]:
        """Forget artifacts recorded before ``created_before`` that no remaining job of their tenant names;
        the sha256 of each blob no artifact row refers to any more (the caller deletes those files)."""
        with self._session() as session:
            old = list(session.scalars(select(ArtifactRow).where(ArtifactRow.created_at < created_before)))
            if not old:  # the common case, each sweep: no job needs reading
                return []
            requests = list(session.execute(select(JobRow.tenant, JobRow.request)))
        named = {
            (tenant, sha) for tenant, request in requests for sha in _named_artifacts(json.loads(request))
        }
        unused = [row for row in old if (row.tenant, row.sha256) not in named]
        with self._session.begin() as session:
            for row in unused:
                session.execute(
                    delete(ArtifactRow).where(
                        ArtifactRow.tenant == row.tenant,
                        ArtifactRow.sha256 == row.sha256,
                        ArtifactRow.kind == row.kind,
                    )
                )
            candidates = {row.sha256 for row in unused}
            still_used = set(
                session.scalars(select(ArtifactRow.sha256).where(ArtifactRow.sha256.in_(candidates)))
            )
        return sorted(candidates - still_used)

    # --- jobs, API side ------------------------------------------------------------------------------

    def create_job(
        self,
        tenant: str,
        request: dict[str, Any],
        request_hash: str,
        idempotency_key: str | None,
        queue: str,
    ) -> tuple[Job, bool]:
        """A new queued job, or (``False``) the job an earlier request of the tenant with this idempotency
        key made. The request's ``callback_url`` is called once the job has ended."""
        if idempotency_key is not None:
            earlier = self.get_job_by_key(tenant, idempotency_key)
            if earlier is not None:
                return earlier, False
        now = _now()
        callback_url = request.get("callback_url")
        row = JobRow(
            id=uuid.uuid4().hex,
            tenant=tenant,
            state=JobState.queued.value,
            queue=queue,
            request=json.dumps(request, sort_keys=True),
            request_hash=request_hash,
            idempotency_key=idempotency_key,
            attempts=0,
            version=1,
            progress_done=0,
            progress_total=0,
            created_at=now,
            updated_at=now,
            queued_at=now,
            callback_url=callback_url,
            callback_state=None if callback_url is None else CallbackState.pending.value,
            callback_attempts=0,
        )
        try:
            with self._session.begin() as session:
                session.add(row)
        except IntegrityError:
            if idempotency_key is None:
                raise
            raced = self.get_job_by_key(tenant, idempotency_key)
            assert raced is not None
            return raced, False
        return _job(row), True

    def delete_job(self, job_id: str) -> None:
        """Forget a job that could not be handed to a worker (the client is told nothing was queued)."""
        with self._session.begin() as session:
            session.execute(
                delete(JobRow).where(
                    JobRow.id == job_id, JobRow.state == JobState.queued.value, JobRow.attempts == 0
                )
            )

    def delete_finished_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        """Forget a finished job (the caller removes its files); ``None`` when there is no such job,
        ``WrongState`` while it is queued or running. ``tenant`` as in ``get_job``."""
        job = self.get_job(job_id, tenant)
        if job is None:
            return None
        if job.state not in TERMINAL_STATES:
            raise WrongState(job)
        finished = [state.value for state in TERMINAL_STATES]
        with self._session.begin() as session:
            statement = delete(JobRow).where(JobRow.id == job_id, JobRow.state.in_(finished))
            if _rowcount(session, statement) != 1:
                raise WrongState(job)
            session.execute(
                delete(UnitRow).where(UnitRow.job_id == job_id)
            )  # left by a coordinator that died
        return job

    def expired_jobs(self, finished_before: datetime) -> list[str]:
        """Finished jobs whose last change lies before ``finished_before``: their results have expired."""
        query = select(JobRow.id).where(
            JobRow.state.in_([state.value for state in TERMINAL_STATES]), JobRow.updated_at < finished_before
        )
        with self._session() as session:
            return list(session.scalars(query))

    def held_attempts(self) -> set[str]:
        """``<job id>-<attempt>`` of every attempt that holds its job now (their work folders are in use)."""
        query = select(JobRow.id, JobRow.attempts).where(JobRow.state.in_(_HELD_VALUES))
        with self._session() as session:
            return {f"{job_id}-{attempts}" for job_id, attempts in session.execute(query)}

    def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        """The job; with ``tenant``, only if it belongs to that tenant (the API never passes ``None``)."""
        query = select(JobRow).where(JobRow.id == job_id)
        if tenant is not None:
            query = query.where(JobRow.tenant == tenant)
        with self._session() as session:
            row = session.scalar(query)
            return None if row is None else _job(row)

    async def poll_version(self, job_id: str, tenant: str) -> int | None:
        """The version (its ETag) alone of the tenant's job: what a poll needs to tell whether anything
        changed."""
        if self._polls is None:
            return await asyncio.to_thread(self._version, job_id, tenant)
        return await self._polls.scalar(POLL_QUERY, (job_id, tenant))

    def _version(self, job_id: str, tenant: str) -> int | None:
        with self.engine.connect() as connection:
            return connection.scalar(
                select(JobRow.version).where(JobRow.id == job_id, JobRow.tenant == tenant)
            )

    def get_job_by_key(self, tenant: str, idempotency_key: str) -> Job | None:
        query = select(JobRow).where(JobRow.tenant == tenant, JobRow.idempotency_key == idempotency_key)
        with self._session() as session:
            row = session.scalar(query)
            return None if row is None else _job(row)

    def count_jobs_by_state(self) -> dict[JobState, int]:
        query = select(JobRow.state, func.count()).group_by(JobRow.state)
        with self._session() as session:
            return {JobState(state): count for state, count in session.execute(query)}

    def audit_durations_s(self) -> list[float]:
        """From first start to success, of each succeeded job kept."""
        query = select(JobRow.running_at, JobRow.succeeded_at).where(
            JobRow.state == JobState.succeeded.value, JobRow.running_at.is_not(None)
        )
        with self._session() as session:
            rows = session.execute(query).all()
        return [(_utc(done) - _utc(started)).total_seconds() for started, done in rows if done is not None]

    def count_active_jobs(self, tenant: str) -> int:
        query = select(func.count()).where(
            JobRow.tenant == tenant, JobRow.state.in_([state.value for state in ACTIVE_STATES])
        )
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def list_jobs(
        self, tenant: str, states: Iterable[JobState], limit: int, before_seq: int | None
    ) -> list[Job]:
        """The tenant's jobs, newest first; ``before_seq`` continues after the last job of the previous
        page."""
        query = select(JobRow).where(JobRow.tenant == tenant).order_by(JobRow.seq.desc()).limit(limit)
        wanted = [state.value for state in states]
        if wanted:
            query = query.where(JobRow.state.in_(wanted))
        if before_seq is not None:
            query = query.where(JobRow.seq < before_seq)
        with self._session() as session:
            return [_job(row) for row in session.scalars(query)]

    def request_cancel(self, tenant: str, job_id: str) -> Job | None:
        """Queued jobs are cancelled at once; running ones become ``cancelling`` until the worker stops.

        ``None`` for a job the tenant does not have; ``WrongState`` for a finished one.
        """
        if self.get_job(job_id, tenant) is None:
            return None
        now = _now()
        moves = (
            (JobState.queued, {"state": JobState.cancelled.value, "cancelled_at": now}),
            (JobState.running, {"state": JobState.cancelling.value, "cancelling_at": now}),
        )
        for source, values in moves:
            if self._transition(job_id, [source], values):
                return self.get_job(job_id)
        job = self.get_job(job_id)
        if job is None or job.state is JobState.cancelling:
            return job
        raise WrongState(job)

    # --- jobs, worker side ---------------------------------------------------------------------------

    def claim(self, job_id: str) -> Job | None:
        """Start an attempt of a queued job; ``None`` when the delivery has nothing to run.

        Only a queued job is claimed: a finished or cancelled one is skipped, and a running one is held by
        a live attempt or, once its lease has lapsed, requeued by ``recover_lost_attempts``. Deliveries
        are at least once; of two deliveries of one job, one claims it and the other is dropped.
        """
        job = self.get_job(job_id)
        if job is None or job.state is not JobState.queued:
            return None
        now = _now()
        values = {
            "state": JobState.running.value,
            "attempts": JobRow.attempts + 1,
            "attempt_started_at": now,
            "heartbeat_at": now,
            "running_at": func.coalesce(JobRow.running_at, now),  # the first attempt's start
        }
        if not self._transition(job_id, [JobState.queued], values, JobRow.attempts == job.attempts):
            return None
        return self.get_job(job_id)

    def heartbeat(self, job_id: str, attempt: int) -> bool:
        """Renew the attempt's lease; ``False`` once the job is finished or another attempt holds it.

        Not a change a client sees: the version (ETag) stays.
        """
        statement = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempts == attempt, JobRow.state.in_(_HELD_VALUES))
            .values(heartbeat_at=_now())
            .execution_options(synchronize_session=False)
        )
        with self._session.begin() as session:
            return _rowcount(session, statement) == 1

    def report_progress(self, job_id: str, attempt: int, phase: str, done: int, total: int) -> None:
        self._transition(
            job_id,
            HELD_STATES,
            {"progress_phase": phase[:200], "progress_done": done, "progress_total": total},
            JobRow.attempts == attempt,
        )

    def cancel_requested(self, job_id: str) -> bool:
        job = self.get_job(job_id)
        return job is None or job.state is JobState.cancelling

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        attempt: int,
        error: dict[str, Any] | None = None,
        result: JobResult | None = None,
    ) -> bool:
        """End the attempt's job in a terminal state; ``False`` unless ``attempt`` still holds the job (it
        finished, or was requeued or settled after the attempt's lease lapsed)."""
        values = _terminal_values(state, error, result)
        return self._transition(job_id, HELD_STATES, values, JobRow.attempts == attempt)

    def release(self, job_id: str, attempt: int, max_attempts: int, error: dict[str, Any]) -> JobState | None:
        """Give back a job whose attempt a passing fault stopped (a full disk, an unreachable store): queued
        again for the sweeper to dispatch, cancelled if a cancel was asked for, or failed with ``error``
        once ``max_attempts`` are spent. None unless ``attempt`` still holds the job."""
        job = self.get_job(job_id)
        if job is None or job.state not in HELD_STATES or job.attempts != attempt:
            return None
        if job.state is JobState.cancelling:
            state, values = JobState.cancelled, _terminal_values(JobState.cancelled)
        elif attempt >= max_attempts:
            state, values = JobState.failed, _terminal_values(JobState.failed, error)
        else:  # handed over "now": the sweeper sends it again once the fault has had time to pass
            state, values = JobState.queued, {"state": JobState.queued.value, "dispatched_at": _now()}
        if self._transition(job_id, [job.state], values, JobRow.attempts == attempt):
            return state
        return self.release(job_id, attempt, max_attempts, error)  # a cancel landed meanwhile

    def rerun(self, job: Job) -> bool:
        """Queue a failed job again from scratch (its failure was a passing fault, and its client submitted
        it again with the same Idempotency-Key); ``False`` when it changed meanwhile."""
        values = {
            "state": JobState.queued.value,
            "attempts": 0,
            "error": None,
            "failed_at": None,
            "running_at": None,
            "dispatched_at": None,
            "queued_at": _now(),
            "progress_phase": None,
            "progress_done": 0,
            "progress_total": 0,
        }
        if job.callback is not None:
            values |= {
                "callback_state": CallbackState.pending.value,
                "callback_attempts": 0,
                "callback_error": None,
                "callback_next_at": None,
            }
        return self._transition(job.id, [JobState.failed], values, JobRow.version == job.version)

    # --- jobs, recovery ---------------------------------------------------------------------------

    def mark_dispatched(self, job_id: str, attempts: int) -> None:
        """Record that the job, queued after ``attempts`` attempts, was handed to the broker (a sweeper
        that requeued it meanwhile is not overwritten)."""
        statement = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.queued.value, JobRow.attempts == attempts)
            .values(dispatched_at=_now())
            .execution_options(synchronize_session=False)
        )
        with self._session.begin() as session:
            session.execute(statement)

    def jobs_to_dispatch(
        self, grace_s: float, redispatch_after_s: float
    ) -> list[tuple[str, str, int, datetime | None]]:
        """Queued jobs no worker may take: id, queue, attempts and when they were last handed over (None:
        never), oldest first.

        Those never handed to a broker for ``grace_s`` (the request or sweep that queued them stopped
        before dispatching), and those handed over ``redispatch_after_s`` ago and still not started (the
        message was lost, or a delivery gave up before claiming): a duplicate is dropped at claim.
        """
        now = _now()
        never = JobRow.dispatched_at.is_(None) & (JobRow.created_at < now - timedelta(seconds=grace_s))
        long_ago = JobRow.dispatched_at < now - timedelta(seconds=redispatch_after_s)
        query = (
            select(JobRow.id, JobRow.queue, JobRow.attempts, JobRow.dispatched_at)
            .where(JobRow.state == JobState.queued.value, never | long_ago)
            .order_by(JobRow.seq)
        )
        with self._session() as session:
            return [
                (job_id, queue, attempts, None if handed is None else _utc(handed))
                for job_id, queue, attempts, handed in session.execute(query)
            ]

    def queued_jobs(self) -> list[str]:
        """Ids of queued jobs, oldest first: what an embedded worker takes up again after a restart."""
        query = select(JobRow.id).where(JobRow.state == JobState.queued.value).order_by(JobRow.seq)
        with self._session() as session:
            return list(session.scalars(query))

    def recover_lost_attempts(self, lease_s: float, max_attempts: int, time_limit_s: float) -> list[str]:
        """Settle the jobs whose attempt stopped renewing its lease (its worker died, or hit the hard
        time limit); the ids of those requeued, which the caller dispatches again.

        A job being cancelled is cancelled; one whose attempt was last seen alive at its hard time limit
        (within a lease), or whose ``max_attempts`` are spent, fails; any other is queued again. Each move
        is conditional on the lapsed attempt, so several sweepers settle a job once.
        """
        cutoff = _now() - timedelta(seconds=lease_s)
        query = select(JobRow).where(JobRow.state.in_(_HELD_VALUES), JobRow.heartbeat_at < cutoff)
        with self._session() as session:
            lapsed = [_job(row) for row in session.scalars(query)]
        requeued = []
        for job in lapsed:
            state, values = _settlement(job, max_attempts, time_limit_s - lease_s)
            still_lapsed = (JobRow.attempts == job.attempts, JobRow.heartbeat_at < cutoff)
            if self._transition(job.id, [job.state], values, *still_lapsed) and state is JobState.queued:
                requeued.append(job.id)
        return requeued

    # --- completion callbacks ------------------------------------------------------------------------------

    def due_callbacks(self, limit: int) -> list[Job]:
        """Ended jobs whose callback is to be sent now, oldest first."""
        now = _now()
        query = (
            select(JobRow)
            .where(
                JobRow.callback_state == CallbackState.pending.value,
                JobRow.state.in_([state.value for state in TERMINAL_STATES]),
                JobRow.callback_next_at.is_(None) | (JobRow.callback_next_at <= now),
            )
            .order_by(JobRow.seq)
            .limit(limit)
        )
        with self._session() as session:
            return [_job(row) for row in session.scalars(query)]

    def claim_callback(self, job_id: str, attempts: int, hold_s: float) -> bool:
        """Take the next try at the job's callback; ``False`` when another sender took it. A claim whose
        sender stopped lapses after ``hold_s``."""
        statement = (
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.callback_state == CallbackState.pending.value,
                JobRow.callback_attempts == attempts,
            )
            .values(callback_attempts=attempts + 1, callback_next_at=_now() + timedelta(seconds=hold_s))
        )
        with self._session.begin() as session:
            return _rowcount(session, statement) == 1

    def settle_callback(
        self,
        job_id: str,
        attempt: int,
        state: CallbackState,
        error: str | None = None,
        next_at: datetime | None = None,
    ) -> None:
        """Record how try ``attempt`` went: delivered, failed for good, or pending again from ``next_at``.
        A try whose claim lapsed and was taken again records nothing."""
        statement = (
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.callback_attempts == attempt,
                JobRow.callback_state == CallbackState.pending.value,
            )
            .values(
                callback_state=state.value,
                callback_error=None if error is None else error[:300],
                callback_next_at=next_at,
                version=JobRow.version + 1,
                updated_at=_now(),
            )
        )
        with self._session.begin() as session:
            session.execute(statement)

    def _transition(
        self, job_id: str, sources: Iterable[JobState], values: dict[str, Any], *conditions: Any
    ) -> bool:
        """One conditional UPDATE: the job must be in one of ``sources`` and meet ``conditions``."""
        statement = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state.in_([s.value for s in sources]), *conditions)
            .values(**values, version=JobRow.version + 1, updated_at=_now())
        )
        with self._session.begin() as session:
            return _rowcount(session, statement) == 1


def _terminal_values(
    state: JobState, error: dict[str, Any] | None = None, result: JobResult | None = None
) -> dict[str, Any]:
    assert state in TERMINAL_STATES
    values: dict[str, Any] = {"state": state.value, f"{state.value}_at": _now()}
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


def _settlement(job: Job, max_attempts: int, ran_out_after_s: float) -> tuple[JobState, dict[str, Any]]:
    """What becomes of a job whose attempt lapsed: the state it moves to and the values written."""
    if job.state is JobState.cancelling:
        return JobState.cancelled, _terminal_values(JobState.cancelled)
    started, last_seen = job.attempt_started_at, job.heartbeat_at
    if started and last_seen and (last_seen - started).total_seconds() >= ran_out_after_s:
        detail = "the audit was still running at the hard time limit when its worker stopped"
        return JobState.failed, _terminal_values(JobState.failed, WORKER_LOST.body(detail))
    if job.attempts >= max_attempts:
        detail = (
            f"the job was started {job.attempts} times and its worker was lost each time (killed or out "
            "of memory); it is not retried again"
        )
        return JobState.failed, _terminal_values(JobState.failed, WORKER_LOST.body(detail))
    return JobState.queued, {"state": JobState.queued.value, "dispatched_at": None}


def _rowcount(session: Session, statement: Any) -> int:
    return session.execute(statement).rowcount  # type: ignore[attr-defined]


def _named_artifacts(request: dict[str, Any]) -> set[str]:
    """The sha256 of every artifact a stored request names (see ``workers.requests.AuditRequest``)."""
    named = {request.get("model"), request.get("probes"), request.get("training_data")}
    named |= set(request.get("twins") or []) | set(request.get("controls") or [])
    named |= {request.get("twin"), request.get("control")}  # requests stored before lists were accepted
    return {sha for sha in named if isinstance(sha, str)}
