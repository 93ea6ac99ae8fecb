"""The Celery application: Redis broker, one task per job, tuned for long jobs that must not be lost.

Only job ids travel through the broker; the job store holds everything else and is the source of truth
(Celery's result backend is not used). Start a worker with
``celery -A workers.worker.celery_app worker -Q audit-cpu`` (or ``-Q audit-gpu`` on a GPU machine).
"""

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from workers.core import logs
from workers.core.config import Settings
from workers.core.requests import WorkQueue
from workers.worker.audit_process import limit_memory

TASK_NAME = "saliency_audit.run_job"
UNIT_TASK_NAME = "saliency_audit.run_unit"  # a unit of a fanned-out audit (workers.worker.fan_out)
QUEUES = {WorkQueue.cpu: "audit-cpu", WorkQueue.gpu: "audit-gpu"}
VISIBILITY_MARGIN_S = 3600


def make_celery(settings: Settings) -> Celery:
    app = Celery("saliency_audit", broker=settings.broker_url, include=["workers.worker.tasks"])
    app.conf.update(
        task_acks_late=True,  # a job's message is acknowledged only once the job has finished
        # A killed worker's message is redelivered; the job store's claim lets one attempt run at a time,
        # and the sweeper requeues (or fails) a job whose attempt stopped renewing its lease.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a busy worker holds no second job another worker could run
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.hard_time_limit_s,
        # Redis redelivers unacknowledged messages after this: above the hard limit, so a long job's message
        # is not delivered again while it runs
        broker_transport_options={"visibility_timeout": settings.hard_time_limit_s + VISIBILITY_MARGIN_S},
        task_default_queue=QUEUES[WorkQueue.cpu],
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        # bounds what a leak in a model runtime can accumulate; a fanned-out audit sends a message per unit
        # (a few dozen per audit), and a new child loads the audit's model again
        worker_max_tasks_per_child=200,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_celery(Settings())


@worker_process_init.connect
def _limit_pool_child_memory(**_: object) -> None:
    """A pool child runs models as the embedded worker's audit processes do: under the same address-space
    limit, set once per child (torch is already loaded, forked from the worker)."""
    limit_memory(Settings().audit_memory_limit_mib)


@setup_logging.connect
def _log_as_the_service(loglevel: int | str | None = None, **_: object) -> None:
    """The worker's log in the service's format (``SALIENCY_LOG_FORMAT``), job ids included, instead of
    Celery's own."""
    logs.configure(Settings().log_format, loglevel or "INFO")
