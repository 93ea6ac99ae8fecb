"""Liveness and readiness probes."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.runtime import RuntimeDep
from service.schemas import Health
from workers.store.database import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Database, broker (or embedded worker) and storage are reachable",
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
        except Exception as error:  # any failure means not ready; the message says which
            results[name] = f"unavailable: {type(error).__name__}: {error}"[:300]
    health = Health(
        status="ok" if all(r == "ok" for r in results.values()) else "unavailable", checks=results
    )
    if health.status != "ok":
        return JSONResponse(health.model_dump(), status_code=503)
    return health
