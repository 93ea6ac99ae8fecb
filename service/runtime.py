"""What every request handler needs, built once per app and injected with ``Depends``."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.job_views import JobViews
from service.key_cache import KeyCache
from service.metrics import ServiceMetrics
from service.webhooks import WebhookSender
from workers.config import Settings
from workers.dispatch import Dispatcher
from workers.storage import Storage
from workers.store.jobs import JobStore
from workers.store.keys import KeyStore


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
