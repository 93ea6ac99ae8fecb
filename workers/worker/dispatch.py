"""How the API hands a job to a worker: through Celery, or to a thread of its own process (embedded).

Both take job ids only; the job store holds the rest. Neither imports torch: the embedded worker's thread
runs each job in an audit process of its own (``workers.worker.audit_supervisor``), so a model never
runs in the API process.
"""

import logging
import queue
import threading
from typing import Protocol

from workers.core.config import Settings
from workers.core.requests import WorkQueue
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.worker.audit_supervisor import AuditSupervisor
from workers.worker.celery_app import QUEUES, TASK_NAME, make_celery

log = logging.getLogger(__name__)


class DispatchError(Exception):
    """The job could not be handed to a worker (the broker is unreachable)."""


class Dispatcher(Protocol):
    name: str

    def start(self) -> None: ...

    def submit(self, job_id: str, work_queue: WorkQueue) -> None: ...

    def check(self) -> None:
        """Raise unless jobs can be dispatched now (readiness)."""

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting in each work queue (metrics)."""

    def waiting(self, work_queue: WorkQueue) -> int:
        """Messages waiting in one work queue, not yet taken by a worker (``DispatchError`` when the broker
        is unreachable)."""

    def stop(self) -> None: ...


class CeleryDispatcher:
    name = "celery"

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)

    def start(self) -> None:
        pass

    def submit(self, job_id: str, work_queue: WorkQueue) -> None:
        try:
            self.app.send_task(
                TASK_NAME,
                args=[job_id],
                task_id=job_id,  # the worker's log names the job
                queue=QUEUES[work_queue],
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as error:  # kombu raises transport-specific errors
            raise DispatchError(f"the broker is unreachable ({type(error).__name__})") from error

    def check(self) -> None:
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def queue_depth(self) -> dict[str, int]:
        return {QUEUES[work_queue]: self.waiting(work_queue) for work_queue in QUEUES}

    def waiting(self, work_queue: WorkQueue) -> int:
        try:
            with self.app.connection_for_read() as connection:
                try:
                    channel = connection.default_channel
                    return channel.queue_declare(QUEUES[work_queue], passive=True).message_count
                except connection.channel_errors:  # Redis keeps no empty queue: nothing waits in it
                    return 0
        except Exception as error:  # kombu raises transport-specific errors
            raise DispatchError(f"the broker is unreachable ({type(error).__name__})") from error

    def stop(self) -> None:
        pass


class EmbeddedDispatcher:
    """One worker thread in the API process, running each job in an audit process of its own, one at a
    time; on start it takes up the jobs the store holds queued (the sweeper requeues those a stopped
    process was running, once their lease lapses)."""

    name = "embedded"

    def __init__(self, store: JobStore, storage: Storage, settings: Settings) -> None:
        self.store = store
        self._supervisor = AuditSupervisor(store, storage, settings)
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="embedded-worker", daemon=True)

    def start(self) -> None:
        for job_id in self.store.recovery.queued_jobs():
            self._jobs.put(job_id)
        self._thread.start()

    def submit(self, job_id: str, work_queue: WorkQueue) -> None:
        self._jobs.put(job_id)

    def check(self) -> None:
        if not self._thread.is_alive():
            raise DispatchError("the embedded worker thread is not running")

    def queue_depth(self) -> dict[str, int]:
        return {self.name: self._jobs.qsize()}

    def waiting(self, work_queue: WorkQueue) -> int:
        return self._jobs.qsize()

    def stop(self) -> None:
        """Kills a running audit (its job is requeued through its lease) rather than wait for it."""
        self._supervisor.stop()
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=5)

    def _work(self) -> None:
        while (job_id := self._jobs.get()) is not None:
            try:
                self._supervisor.run(job_id)
            except Exception:  # the store is unreachable: the sweeper settles the job once its lease lapses
                log.exception("embedded worker: job %s", job_id)
