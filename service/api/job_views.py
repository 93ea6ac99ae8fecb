"""Rendered job statuses, by job and version.

Polls dominate the API's traffic and most find the job unchanged. A job's representation changes only
with its version (every visible change bumps it; the version is the ETag), so a poll reads the version
with one indexed query and answers from the rendering of that version, rendered once.
"""

from collections import OrderedDict
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from service.api.schemas import JobOut
from workers.core.store.jobs import JobStore
from workers.core.store.states import JobState

CAPACITY = 4096  # renderings kept, about 4 KiB each


@dataclass(frozen=True)
class JobView:
    id: str
    version: int
    state: JobState
    body: bytes  # JobOut as JSON


class JobViews:
    """Used on the event loop only: the store's version read is asyncio, a rendering runs in a thread."""

    def __init__(self, store: JobStore, capacity: int = CAPACITY) -> None:
        self._store = store
        self._capacity = capacity
        self._views: OrderedDict[str, JobView] = OrderedDict()

    async def get(self, job_id: str, tenant: str) -> JobView | None:
        """The tenant's job as it is now; ``None`` when the tenant has no such job."""
        version = await self._store.jobs.poll_version(job_id, tenant)
        if version is None:
            return None
        view = self._views.get(job_id)
        if view is None or view.version < version:
            view = await run_in_threadpool(self._render, job_id, tenant)
            if view is None:
                return None
            self._views[job_id] = view
        self._views.move_to_end(job_id)
        if len(self._views) > self._capacity:
            self._views.popitem(last=False)
        return view

    def _render(self, job_id: str, tenant: str) -> JobView | None:
        """The job as it is now, at its current version."""
        job = self._store.jobs.get_job(job_id, tenant)
        if job is None:
            return None
        return JobView(job.id, job.version, job.state, JobOut.of(job).model_dump_json().encode())
