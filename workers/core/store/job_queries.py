"""The API's side of the job store: create, read, list, cancel, delete and rerun a tenant's jobs."""

import asyncio
import json
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workers.core.store.database import PollConnection
from workers.core.store.states import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    CallbackState,
    Job,
    JobState,
    JobTable,
    WrongState,
    job_record,
    rowcount,
    utc,
    utc_now,
)
from workers.core.store.tables import JobRow, UnitRow

POLL_QUERY = f"SELECT version FROM {JobRow.__tablename__} WHERE id = %s AND tenant = %s"


class JobQueries(JobTable):
    """What the API asks of the job store."""

    def __init__(self, engine: Engine, session: sessionmaker[Session]) -> None:
        super().__init__(session)
        self.engine = engine
        # polls read the version on the API's event loop; SQLite (local, no server) in a thread
        self._polls = PollConnection(engine) if engine.dialect.name == "postgresql" else None

    async def aclose(self) -> None:
        """The asyncio pool of the polls, on the event loop that used it."""
        if self._polls is not None:
            await self._polls.close()

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
        now = utc_now()
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
        return job_record(row), True

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
            if rowcount(session, statement) != 1:
                raise WrongState(job)
            session.execute(
                delete(UnitRow).where(UnitRow.job_id == job_id)
            )  # left by a coordinator that died
        return job

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
            return None if row is None else job_record(row)

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
        return [(utc(done) - utc(started)).total_seconds() for started, done in rows if done is not None]

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
            return [job_record(row) for row in session.scalars(query)]

    def request_cancel(self, tenant: str, job_id: str) -> Job | None:
        """Queued jobs are cancelled at once; running ones become ``cancelling`` until the worker stops.

        ``None`` for a job the tenant does not have; ``WrongState`` for a finished one.
        """
        if self.get_job(job_id, tenant) is None:
            return None
        now = utc_now()
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
            "queued_at": utc_now(),
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
