"""What every request handler needs, built once per app and injected with ``Depends``."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.api.job_views import JobViews
from service.api.key_cache import KeyCache
from service.api.metrics import ServiceMetrics
from service.api.webhooks import WebhookSender
from workers.core.config import Settings
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.core.store.keys import KeyStore
from workers.worker.dispatch import Dispatcher


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: JobStore
    storage: Storage
    dispatcher: Dispatcher
    job_views: JobViews
    keys: KeyStore
    key_cache: KeyCache
    metrics: ServiceMetrics
    webhooks: WebhookSender


async def _runtime(request: Request) -> Runtime:
    """Async, so FastAPI resolves it on the event loop instead of a worker thread (a thread hop per
    request)."""
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
