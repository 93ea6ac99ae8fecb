"""The FastAPI application. ``create_app`` wires settings, store, storage and dispatcher together.

Run it with ``saliency-audit serve`` (embedded worker unless SALIENCY_BROKER_URL is set), or with
``uvicorn --factory service.api.app:create_app`` (API keys required unless SALIENCY_AUTH=local).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from service.api.body_limit import BodyLimitMiddleware
from service.api.job_views import JobViews
from service.api.key_cache import KeyCache
from service.api.metrics import ServiceMetrics
from service.api.openapi import openapi_document, operation_id
from service.api.problems import install_problem_handlers
from service.api.request_ids import RequestIdMiddleware
from service.api.routes import artifacts, audits, health, keys, problem_types, webhooks
from service.api.runtime import Runtime
from service.api.webhooks import WebhookSender
from workers.core.config import AuthMode, Settings
from workers.core.problems import server_roots
from workers.core.storage import Storage
from workers.core.store.database import make_engine, migrate
from workers.core.store.jobs import JobStore
from workers.core.store.keys import KeyStore
from workers.worker.dispatch import CeleryDispatcher, Dispatcher, EmbeddedDispatcher
from workers.worker.sweeper import Sweeper

DESCRIPTION = """Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018) on your image classifier.

Upload a model and probe images, submit an audit, poll it, download the report and the map archive.
Requests carry an API key (`Authorization: Bearer sa_...`); every job and artifact belongs to the key's
tenant. Errors are RFC 9457 problem details (application/problem+json) whose `type` is listed at
`/problems`; the `X-Request-ID` response header names the request in the service's log."""

UPLOAD_PATHS = frozenset({"/v1/models", "/v1/probe-sets", "/v1/training-sets"})


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.auth is None:  # only `serve` on a loopback address may default to the local tenant
        settings = settings.model_copy(update={"auth": AuthMode.keys})
    engine = make_engine(settings.resolved_database_url)
    store = JobStore(engine)
    storage = Storage.from_settings(settings)
    if dispatcher is None:
        dispatcher = (
            CeleryDispatcher(settings)
            if settings.broker_url
            else EmbeddedDispatcher(store, storage, settings)
        )
    key_store = KeyStore(engine)
    runtime = Runtime(
        settings=settings,
        store=store,
        storage=storage,
        dispatcher=dispatcher,
        job_views=JobViews(store),
        keys=key_store,
        key_cache=KeyCache(key_store),
        metrics=ServiceMetrics(store, dispatcher),
        webhooks=WebhookSender(store, key_store, settings),
    )
    sweeper = Sweeper(store, storage, dispatcher, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage.prepare()
        migrate(store.engine)
        runtime.dispatcher.start()
        sweeper.start()
        runtime.webhooks.start()
        yield
        runtime.webhooks.stop()
        sweeper.stop()
        runtime.dispatcher.stop()
        await store.aclose()

    app = FastAPI(
        title="Saliency audit",
        version=version("saliency-audit"),
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.runtime = runtime
    app.state.server_roots = server_roots(settings.data_dir)
    install_problem_handlers(app)
    for module in (artifacts, audits, keys, webhooks, health, problem_types):
        app.include_router(module.router)
    runtime.metrics.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes, upload_paths=UPLOAD_PATHS)
    app.add_middleware(RequestIdMiddleware)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app
