"""The callback sender's side of the job store: an outbox of completion callbacks, each try claimed by
one sender and settled once."""

from datetime import datetime, timedelta

from sqlalchemy import select, update

from workers.core.store.states import (
    TERMINAL_STATES,
    CallbackState,
    Job,
    JobTable,
    job_record,
    rowcount,
    utc_now,
)
from workers.core.store.tables import JobRow


class CallbackOutbox(JobTable):
    """What the completion-callback sender asks of the job store."""

    def due_callbacks(self, limit: int) -> list[Job]:
        """Ended jobs whose callback is to be sent now, oldest first."""
        now = utc_now()
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
            return [job_record(row) for row in session.scalars(query)]

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
            .values(callback_attempts=attempts + 1, callback_next_at=utc_now() + timedelta(seconds=hold_s))
        )
        with self._session.begin() as session:
            return rowcount(session, statement) == 1

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
                updated_at=utc_now(),
            )
        )
        with self._session.begin() as session:
            session.execute(statement)
