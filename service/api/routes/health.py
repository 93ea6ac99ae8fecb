"""Liveness and readiness probes (no API key needed)."""

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.runtime import RuntimeDep
from service.api.schemas import Health
from workers.core.outages import BROKER, DATABASE, DISK, OBJECT_STORE, OUTAGES, require_free_disk
from workers.core.store.database import ping

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Health, summary="The process is up")
def get_health() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Database, broker (or embedded worker) and storage are reachable",
    description="Each check reads 'ok' or 'unavailable' (storage: 'degraded' below min_free_disk_mib free); "
    "the error itself goes to the service's log, once per outage.",
)
def get_readiness(runtime: RuntimeDep) -> Health | JSONResponse:
    checks = {  # name shown -> (the outage it is, the check)
        "database": (DATABASE, lambda: ping(runtime.store.engine)),
        runtime.dispatcher.name: (BROKER, runtime.dispatcher.check),
        "storage": (OBJECT_STORE, runtime.storage.check),
    }
    results = {}
    for name, (outage, check) in checks.items():
        try:
            check()
            results[name] = "ok"
            OUTAGES.working(outage)
        except Exception as error:  # any failure means not ready; the log keeps what it was, once
            OUTAGES.failed(outage, error, "/readyz")
            results[name] = "unavailable"
    if results["storage"] == "ok":
        try:
            require_free_disk(runtime.storage.root, runtime.settings.min_free_disk_mib)
            OUTAGES.working(DISK)
        except OSError:
            results["storage"] = "degraded"  # less free space than uploads and new audits need
    health = Health(
        status="ok" if all(r == "ok" for r in results.values()) else "unavailable", checks=results
    )
    if health.status != "ok":
        return JSONResponse(health.model_dump(), status_code=503)
    return health
