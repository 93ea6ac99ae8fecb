"""The sweeper's side of the job store: jobs to hand to a broker (again), attempts whose lease lapsed,
results that expired."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from workers.core.problems import WORKER_LOST
from workers.core.store.states import (
    HELD_VALUES,
    TERMINAL_STATES,
    Job,
    JobState,
    JobTable,
    job_record,
    terminal_values,
    utc,
    utc_now,
)
from workers.core.store.tables import JobRow


class Recovery(JobTable):
    """What the sweeper (and an embedded worker starting up) asks of the job store."""

    def expired_jobs(self, finished_before: datetime) -> list[str]:
        """Finished jobs whose last change lies before ``finished_before``: their results have expired."""
        query = select(JobRow.id).where(
            JobRow.state.in_([state.value for state in TERMINAL_STATES]), JobRow.updated_at < finished_before
        )
        with self._session() as session:
            return list(session.scalars(query))

    def held_attempts(self) -> set[str]:
        """``<job id>-<attempt>`` of every attempt that holds its job now (their work folders are in use)."""
        query = select(JobRow.id, JobRow.attempts).where(JobRow.state.in_(HELD_VALUES))
        with self._session() as session:
            return {f"{job_id}-{attempts}" for job_id, attempts in session.execute(query)}

    def mark_dispatched(self, job_id: str, attempts: int) -> None:
        """Record that the job, queued after ``attempts`` attempts, was handed to the broker (a sweeper
        that requeued it meanwhile is not overwritten)."""
        statement = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.queued.value, JobRow.attempts == attempts)
            .values(dispatched_at=utc_now())
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
        now = utc_now()
        never = JobRow.dispatched_at.is_(None) & (JobRow.created_at < now - timedelta(seconds=grace_s))
        long_ago = JobRow.dispatched_at < now - timedelta(seconds=redispatch_after_s)
        query = (
            select(JobRow.id, JobRow.queue, JobRow.attempts, JobRow.dispatched_at)
            .where(JobRow.state == JobState.queued.value, never | long_ago)
            .order_by(JobRow.seq)
        )
        with self._session() as session:
            return [
                (job_id, queue, attempts, None if handed is None else utc(handed))
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
        cutoff = utc_now() - timedelta(seconds=lease_s)
        query = select(JobRow).where(JobRow.state.in_(HELD_VALUES), JobRow.heartbeat_at < cutoff)
        with self._session() as session:
            lapsed = [job_record(row) for row in session.scalars(query)]
        requeued = []
        for job in lapsed:
            state, values = _settlement(job, max_attempts, time_limit_s - lease_s)
            still_lapsed = (JobRow.attempts == job.attempts, JobRow.heartbeat_at < cutoff)
            if self._transition(job.id, [job.state], values, *still_lapsed) and state is JobState.queued:
                requeued.append(job.id)
        return requeued


def _settlement(job: Job, max_attempts: int, ran_out_after_s: float) -> tuple[JobState, dict[str, Any]]:
    """What becomes of a job whose attempt lapsed: the state it moves to and the values written."""
    if job.state is JobState.cancelling:
        return JobState.cancelled, terminal_values(JobState.cancelled)
    started, last_seen = job.attempt_started_at, job.heartbeat_at
    if started and last_seen and (last_seen - started).total_seconds() >= ran_out_after_s:
        detail = "the audit was still running at the hard time limit when its worker stopped"
        return JobState.failed, terminal_values(JobState.failed, WORKER_LOST.body(detail))
    if job.attempts >= max_attempts:
        detail = (
            f"the job was started {job.attempts} times and its worker was lost each time (killed or out "
            "of memory); it is not retried again"
        )
        return JobState.failed, terminal_values(JobState.failed, WORKER_LOST.body(detail))
    return JobState.queued, {"state": JobState.queued.value, "dispatched_at": None}
