"""A worker's side of the job store: an attempt claims a queued job, renews its lease, reports progress
and ends the job; every write is conditional on the attempt still holding the job."""

from typing import Any

from sqlalchemy import func, update

from workers.core.store.states import (
    HELD_STATES,
    HELD_VALUES,
    Job,
    JobResult,
    JobState,
    JobTable,
    rowcount,
    terminal_values,
    utc_now,
)
from workers.core.store.tables import JobRow


class Attempts(JobTable):
    """What a worker's attempt asks of the job store."""

    def claim(self, job_id: str) -> Job | None:
        """Start an attempt of a queued job; ``None`` when the delivery has nothing to run.

        Only a queued job is claimed: a finished or cancelled one is skipped, and a running one is held by
        a live attempt or, once its lease has lapsed, requeued by ``recover_lost_attempts``. Deliveries
        are at least once; of two deliveries of one job, one claims it and the other is dropped.
        """
        job = self.get_job(job_id)
        if job is None or job.state is not JobState.queued:
            return None
        now = utc_now()
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
            .where(JobRow.id == job_id, JobRow.attempts == attempt, JobRow.state.in_(HELD_VALUES))
            .values(heartbeat_at=utc_now())
            .execution_options(synchronize_session=False)
        )
        with self._session.begin() as session:
            return rowcount(session, statement) == 1

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
        values = terminal_values(state, error, result)
        return self._transition(job_id, HELD_STATES, values, JobRow.attempts == attempt)

    def release(self, job_id: str, attempt: int, max_attempts: int, error: dict[str, Any]) -> JobState | None:
        """Give back a job whose attempt a passing fault stopped (a full disk, an unreachable store): queued
        again for the sweeper to dispatch, cancelled if a cancel was asked for, or failed with ``error``
        once ``max_attempts`` are spent. None unless ``attempt`` still holds the job."""
        job = self.get_job(job_id)
        if job is None or job.state not in HELD_STATES or job.attempts != attempt:
            return None
        if job.state is JobState.cancelling:
            state, values = JobState.cancelled, terminal_values(JobState.cancelled)
        elif attempt >= max_attempts:
            state, values = JobState.failed, terminal_values(JobState.failed, error)
        else:  # handed over "now": the sweeper sends it again once the fault has had time to pass
            state, values = JobState.queued, {"state": JobState.queued.value, "dispatched_at": utc_now()}
        if self._transition(job_id, [job.state], values, JobRow.attempts == attempt):
            return state
        return self.release(job_id, attempt, max_attempts, error)  # a cancel landed meanwhile
