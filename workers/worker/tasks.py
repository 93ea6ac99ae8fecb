"""The Celery task: a thin shell around ``execute_job``; the job store, not the task, records outcomes."""

import logging
import random
from functools import cache
from pathlib import Path

from celery import Task

from workers.core import logs
from workers.core.config import Settings
from workers.core.outages import DATABASE, DISK, OBJECT_STORE, OUTAGES, outage_of, require_free_disk
from workers.core.requests import WorkQueue
from workers.core.storage import Storage
from workers.core.store.database import make_engine
from workers.core.store.jobs import JobStore
from workers.core.store.states import Job
from workers.core.store.units import PlanId, UnitStore
from workers.worker.celery_app import QUEUES, TASK_NAME, UNIT_TASK_NAME, app
from workers.worker.fan_out import RUNNER, FanOut, UnitFiles, execute_unit, listening_processes
from workers.worker.job_runner import execute_job

log = logging.getLogger(__name__)

MAX_PAUSE_S = 60.0


@cache
def _runtime() -> tuple[JobStore, Storage, Settings]:
    """Built on first use in the worker child, after the fork: database connections are not shared."""
    settings = Settings()
    storage = Storage.from_settings(settings)
    storage.prepare()
    return JobStore(make_engine(settings.resolved_database_url)), storage, settings


def pause_s(first_s: float, tries: int, rng: random.Random) -> float:
    """Doubling pauses up to a minute, each drawn from its upper half so that workers do not retry in step."""
    ceiling = min(first_s * 2**tries, max(MAX_PAUSE_S, first_s))
    return rng.uniform(ceiling / 2, ceiling)


@app.task(name=TASK_NAME, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """The engine's failures are recorded by ``execute_job``; what escapes it is the job store failing, or
    too little disk to start, so the delivery is tried again after a pause. After ``store_retries`` tries
    the message is dropped: the sweeper hands a queued job no worker started over again."""
    store, storage, settings = _runtime()
    RUNNER.forget()  # a model kept for helping another audit: this process now runs one of its own
    try:
        require_free_disk(storage.root, settings.min_free_disk_mib)  # no new audit below the floor
        execute_job(job_id, store, storage, settings, _fan_out)
    except Exception as error:
        outage = outage_of(error)
        if outage is None:
            raise
        OUTAGES.failed(outage, error, f"delivery of job {job_id}")
        tries = self.request.retries
        if tries >= settings.store_retries:
            log.warning("job %s: %d tries failed; the sweeper hands it over later", job_id, tries)
            return
        pause = pause_s(settings.store_retry_s, tries, random.Random())
        raise self.retry(countdown=pause, max_retries=settings.store_retries) from error
    OUTAGES.working(DATABASE, DISK, OBJECT_STORE)


def _fan_out(job: Job, work: Path) -> FanOut | None:
    """Share the audit's units when another worker process listens on its queue."""
    _, storage, settings = _runtime()
    queue = QUEUES[WorkQueue(job.queue)]
    if not settings.fan_out or listening_processes(app, queue) < 2:
        return None
    plan = PlanId(job.id, job.attempts)

    def send(key: str) -> None:
        app.send_task(UNIT_TASK_NAME, args=[plan.job_id, plan.attempt, key], queue=queue)

    return FanOut(plan, _units(), UnitFiles(storage, plan, work / "units"), send, settings.lease_s)


@cache
def _units() -> UnitStore:
    return UnitStore(_runtime()[0].engine)


@app.task(name=UNIT_TASK_NAME)
def run_audit_unit(job_id: str, attempt: int, key: str) -> None:
    """A unit of another worker's audit: run if still wanted, else dropped (its coordinator runs every unit
    no one else took)."""
    store, storage, settings = _runtime()
    with logs.bound_job(job_id):
        execute_unit(PlanId(job_id, attempt), key, store, _units(), storage, settings)
