"""The FastAPI application. ``create_app`` wires settings, store, storage and dispatcher together.

Run it with ``saliency-audit serve`` (embedded worker unless SALIENCY_BROKER_URL is set), or with
``uvicorn --factory service.app:create_app``.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from service.job_views import JobViews
from service.problems import install_problem_handlers
from service.routes import artifacts, audits, health
from service.runtime import Runtime
from workers.config import Settings
from workers.dispatch import CeleryDispatcher, Dispatcher, EmbeddedDispatcher
from workers.storage import Storage
from workers.store.database import make_engine, migrate
from workers.store.jobs import JobStore
from workers.sweeper import Sweeper

DESCRIPTION = """Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018) on your image classifier.

Upload a model and probe images, submit an audit, poll it, download the report and the map archive.
Errors are RFC 9457 problem details (application/problem+json)."""


def create_app(settings: Settings | None = None, dispatcher: Dispatcher | None = None) -> FastAPI:
    settings = settings or Settings()
    store = JobStore(make_engine(settings.resolved_database_url))
    storage = Storage(settings.data_dir)
    if dispatcher is None:
        dispatcher = (
            CeleryDispatcher(settings)
            if settings.broker_url
            else EmbeddedDispatcher(store, storage, settings)
        )
    runtime = Runtime(
        settings=settings, store=store, storage=storage, dispatcher=dispatcher, job_views=JobViews(store)
    )
    sweeper = Sweeper(store, dispatcher, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage.prepare()
        migrate(store.engine)
        runtime.dispatcher.start()
        sweeper.start()
        yield
        sweeper.stop()
        runtime.dispatcher.stop()
        await store.aclose()

    app = FastAPI(
        title="Saliency audit",
        version=version("saliency-audit"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_problem_handlers(app)
    for module in (artifacts, audits, health):
        app.include_router(module.router)
    return app
