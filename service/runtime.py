"""What every request handler needs, built once per app and injected with ``Depends``."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.job_views import JobViews
from workers.config import Settings
from workers.dispatch import Dispatcher
from workers.storage import Storage
from workers.store.jobs import JobStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: JobStore
    storage: Storage
    dispatcher: Dispatcher
    job_views: JobViews


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
