"""Liveness and readiness probes (no API key needed)."""

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.runtime import RuntimeDep
from service.schemas import Health
from workers.store.database import ping

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Database, broker (or embedded worker) and storage are reachable",
    description="Each check reads 'ok' or 'unavailable'; the error itself goes to the service's log.",
)
def readyz(runtime: RuntimeDep) -> Health | JSONResponse:
    checks = {
        "database": lambda: ping(runtime.store.engine),
        runtime.dispatcher.name: runtime.dispatcher.check,
        "storage": runtime.storage.check,
    }
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception:  # any failure means not ready; the log keeps what it was
            log.warning("readiness: %s unavailable", name, exc_info=True)
            results[name] = "unavailable"
    health = Health(
        status="ok" if all(r == "ok" for r in results.values()) else "unavailable", checks=results
    )
    if health.status != "ok":
        return JSONResponse(health.model_dump(), status_code=503)
    return health
