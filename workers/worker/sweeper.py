"""Hand jobs to workers, and hand them again when no worker holds them.

A job can be left without a worker in three ways: its API process stopped between recording it and
dispatching it; the worker running it died (killed, out of memory, past the hard time limit) and its
lease lapsed; or its message was lost before any worker claimed it (a broker that kept nothing, a worker
that gave up its retries while the job store was down). The sweeper, a thread of the API process, finds
each in the job store and dispatches it again, so an accepted job is never lost. Several API processes
may sweep one store: each lapsed attempt is settled by one conditional update, and a job delivered twice
is claimed once.

It also applies retention: finished jobs and their results expire ``retention_s`` after they ended,
artifacts no remaining job names expire as long after their upload, and partial uploads and stale work
folders are removed.
"""

import logging
from datetime import UTC, datetime, timedelta

from workers.core.config import Settings
from workers.core.outages import BROKER, OUTAGES
from workers.core.periodic import Periodic
from workers.core.requests import WorkQueue
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.core.store.states import WrongState
from workers.worker.dispatch import Dispatcher, DispatchError

log = logging.getLogger(__name__)


def dispatch_job(
    store: JobStore, dispatcher: Dispatcher, job_id: str, work_queue: WorkQueue, attempts: int
) -> None:
    """Hand the queued job to a worker and record that it was handed; ``DispatchError`` when it was not."""
    dispatcher.submit(job_id, work_queue)
    store.recovery.mark_dispatched(job_id, attempts)


class Sweeper:
    def __init__(self, store: JobStore, storage: Storage, dispatcher: Dispatcher, settings: Settings) -> None:
        self.store, self.storage, self.dispatcher, self.settings = store, storage, dispatcher, settings
        self._rounds = Periodic("job-sweeper", settings.sweep_interval_s, self._round)

    def start(self) -> None:
        self._rounds.start()

    def stop(self) -> None:
        self._rounds.stop()

    def sweep(self) -> int:
        """Settle lapsed attempts and dispatch the jobs no worker has; how many were dispatched."""
        settings = self.settings
        requeued = self.store.recovery.recover_lost_attempts(
            settings.lease_s, settings.max_attempts, settings.hard_time_limit_s
        )
        for job_id in requeued:
            log.warning("job %s: its worker stopped renewing the lease; requeued", job_id)
        dispatched = 0
        # a job just submitted gets one lease to be dispatched by the request that made it; one handed
        # over a while ago and not started is handed over again once no message waits in its work queue
        # (a message still waiting may be its own, behind others; none waiting means its own was lost)
        # (one handed over a hard time limit ago is handed over again whatever waits: a queue that never
        # empties must not hold a lost job for good)
        empty: dict[WorkQueue, bool] = {}
        overdue = datetime.now(UTC) - timedelta(seconds=settings.hard_time_limit_s)
        for job_id, work_queue, attempts, handed_at in self.store.recovery.jobs_to_dispatch(
            grace_s=settings.lease_s, redispatch_after_s=settings.redispatch_after_s
        ):
            queue = WorkQueue(work_queue)
            try:
                if handed_at is not None and handed_at > overdue:
                    if queue not in empty:
                        empty[queue] = self.dispatcher.waiting(queue) == 0
                    if not empty[queue]:
                        continue
                dispatch_job(self.store, self.dispatcher, job_id, queue, attempts)
            except DispatchError as error:
                OUTAGES.failed(BROKER, error, "sweeper (jobs wait, the next sweep dispatches them)")
                break  # the broker is down: do not wait out its retries once per job
            OUTAGES.working(BROKER)
            dispatched += 1
        return dispatched

    def expire(self) -> int:
        """Delete what the retention period has passed for; how many jobs were deleted."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.retention_s)
        deleted = 0
        for job_id in self.store.recovery.expired_jobs(cutoff):
            try:
                finished = self.store.jobs.delete_finished_job(job_id)
            except WrongState:  # queued again meanwhile (a resubmission reran it)
                continue
            if finished is not None:
                self.storage.remove_results(job_id)
                deleted += 1
        for sha256 in self.store.artifacts.delete_unused_artifacts(cutoff):
            self.storage.remove_blob(sha256, cutoff.timestamp())
        self.storage.remove_abandoned(self.settings.abandoned_upload_s, self.store.recovery.held_attempts())
        return deleted

    def _round(self) -> None:
        self.sweep()
        self.expire()
