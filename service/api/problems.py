"""RFC 9457 problem details: every error the API returns, a client's mistake or its own.

Each answer carries a stable ``type`` from ``workers.core.problems.CATALOG``; its detail never holds a server
path (scrubbed here as a last line of defence), an exception's text or a traceback: unexpected errors are
logged under the request id the client gets in ``X-Request-ID``.
"""

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from workers.core import problems
from workers.core.object_store import StoreUnavailable
from workers.core.outages import DATABASE, DISK, OBJECT_STORE, OUTAGES, outage_of
from workers.core.problems import ProblemKind, redact_paths

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_BY_STATUS = {
    400: problems.MALFORMED_BODY,
    401: problems.UNAUTHORIZED,
    403: problems.FORBIDDEN,
    404: problems.NOT_FOUND,
    405: problems.METHOD_NOT_ALLOWED,
    413: problems.BODY_TOO_LARGE,
    415: problems.UNSUPPORTED_MEDIA_TYPE,
}


class ProblemDetail(BaseModel):
    type: str = Field(
        "about:blank", description="A URI reference naming the kind of problem: /problems/<kind>"
    )
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None  # request validation: one entry per invalid field


class Problem(Exception):
    """Raised by service functions; the handler turns it into a problem+json response."""

    def __init__(self, kind: ProblemKind, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.headers = kind, detail, headers


def not_found(what: str) -> Problem:
    return Problem(problems.NOT_FOUND, f"{what} does not exist")


def problem_response(
    request: Request,
    kind: ProblemKind,
    detail: str,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    roots = request.app.state.server_roots
    body = ProblemDetail(
        type=kind.type,
        title=kind.title,
        status=kind.status,
        detail=redact_paths(detail, roots),
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=kind.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


# a passing outage of a dependency: what the client is told, and when to come back
_OUTAGE_ANSWERS = {
    DATABASE: (problems.DATABASE_UNAVAILABLE, "the job store is unreachable for now; retry later", "5"),
    DISK: (problems.INSUFFICIENT_STORAGE, "the service's disk is full; nothing was kept, retry later", "30"),
    OBJECT_STORE: (problems.STORAGE_UNAVAILABLE, "the object store is unreachable; retry later", "10"),
}  # fmt: skip


def outage_response(request: Request, error: BaseException) -> JSONResponse | None:
    """A 503 or 507 for a dependency's passing outage, logged once per outage; None for anything else."""
    outage = outage_of(error)
    if outage is None:
        return None
    OUTAGES.failed(outage, error, f"{request.method} {request.url.path}")
    kind, detail, retry_after = _OUTAGE_ANSWERS[outage]
    return problem_response(request, kind, detail, {"Retry-After": retry_after})


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, error: Problem) -> JSONResponse:
        return problem_response(request, error.kind, error.detail, error.headers)

    @app.exception_handler(StoreUnavailable)
    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.Error)
    @app.exception_handler(OSError)
    async def _outage(request: Request, error: Exception) -> JSONResponse:
        answer = outage_response(request, error)
        if answer is None:
            raise error  # not an outage: the request-id middleware answers it as an internal error
        return answer

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in error.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(request, problems.INVALID_REQUEST, detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        kind = _BY_STATUS.get(error.status_code)
        if kind is None:  # a status no route raises on purpose
            kind = ProblemKind("http-error", error.status_code, "HTTP error", "", "")
        detail = str(error.detail)
        if error.status_code == 404 and detail == "Not Found":  # the path matches no route
            detail = "no such resource; the API's paths are listed at /docs"
        return problem_response(request, kind, detail, error.headers)
