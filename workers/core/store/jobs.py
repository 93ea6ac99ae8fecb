"""The job store: one part per caller over one database, so a change to how workers hold jobs edits
``attempts`` and not what every API route depends on (decision 0027).

``jobs`` (the API: create, read, list, cancel), ``attempts`` (a worker's attempt: claim, lease, progress,
finish), ``recovery`` (the sweeper: dispatch, lapsed leases, expiry), ``callbacks`` (the completion-callback
outbox) and ``artifacts`` (uploads). Every state change goes through ``states.JobTable``.
"""

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from workers.core.store.artifacts import ArtifactStore
from workers.core.store.attempts import Attempts
from workers.core.store.callbacks import CallbackOutbox
from workers.core.store.job_queries import JobQueries
from workers.core.store.recovery import Recovery


class JobStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        session = sessionmaker(engine, expire_on_commit=False)
        self.jobs = JobQueries(engine, session)
        self.attempts = Attempts(session)
        self.recovery = Recovery(session)
        self.callbacks = CallbackOutbox(session)
        self.artifacts = ArtifactStore(session)

    def close(self) -> None:
        self.engine.dispose()

    async def aclose(self) -> None:
        """Also the asyncio pool of the polls, on the event loop that used it."""
        await self.jobs.aclose()
        self.close()
