"""Rendered job statuses, by job and version.

Polls dominate the API's traffic and most find the job unchanged. A job's representation changes only
with its version (every visible change bumps it; the version is the ETag), so a poll reads the version
with one indexed query and answers from the rendering of that version, rendered once.
"""

from dataclasses import dataclass
from functools import lru_cache

from service.schemas import JobOut
from workers.store.jobs import JobState, JobStore

CAPACITY = 4096  # renderings kept, about 4 KiB each


@dataclass(frozen=True)
class JobView:
    id: str
    version: int
    state: JobState
    body: bytes  # JobOut as JSON


class JobViews:
    def __init__(self, store: JobStore, capacity: int = CAPACITY) -> None:
        self._store = store
        self._rendered = lru_cache(maxsize=capacity)(self._render)

    def get(self, job_id: str) -> JobView | None:
        version = self._store.job_version(job_id)
        return None if version is None else self._rendered(job_id, version)

    def _render(self, job_id: str, version: int) -> JobView | None:
        """The job as it is now: its version may already be newer than the one asked for."""
        job = self._store.get_job(job_id)
        if job is None:
            return None
        return JobView(job.id, job.version, job.state, JobOut.of(job).model_dump_json().encode())
