"""The Celery task: a thin shell around ``execute_job``; the job store, not the task, records outcomes."""

from functools import cache

from celery import Task

from workers.celery_app import TASK_NAME, app
from workers.config import Settings
from workers.job_runner import execute_job
from workers.storage import Storage
from workers.store.database import make_engine
from workers.store.jobs import JobStore


@cache
def _runtime() -> tuple[JobStore, Storage, Settings]:
    """Built on first use in the worker child, after the fork: database connections are not shared."""
    settings = Settings()
    storage = Storage.from_settings(settings)
    storage.prepare()
    return JobStore(make_engine(settings.resolved_database_url)), storage, settings


STORE_RETRIES = 10
STORE_RETRY_DELAY_S = 30


@app.task(name=TASK_NAME, bind=True)
def run_job(self: Task, job_id: str) -> None:
    """The engine's failures are recorded by ``execute_job``; what escapes it is the store or the disk
    failing, so the job is tried again later rather than left unfinished."""
    store, storage, settings = _runtime()
    try:
        execute_job(job_id, store, storage, settings)
    except Exception as error:
        raise self.retry(exc=error, countdown=STORE_RETRY_DELAY_S, max_retries=STORE_RETRIES) from error
