"""The Celery task: a thin shell around ``execute_job``; the job store, not the task, records outcomes."""

import logging
import random
from functools import cache

from celery import Task

from workers.celery_app import TASK_NAME, app
from workers.config import Settings
from workers.job_runner import execute_job
from workers.outages import DATABASE, DISK, OBJECT_STORE, OUTAGES, outage_of, require_free_disk
from workers.storage import Storage
from workers.store.database import make_engine
from workers.store.jobs import JobStore

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
    try:
        require_free_disk(storage.root, settings.min_free_disk_mib)  # no new audit below the floor
        execute_job(job_id, store, storage, settings)
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
