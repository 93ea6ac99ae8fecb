"""HTTP routes: thin; the work is in the service functions (``service.api.artifacts``,
``service.api.audits``)."""

from typing import Any

from service.api.openapi import response_headers
from service.api.problems import PROBLEM_MEDIA_TYPE, ProblemDetail
from workers.core import problems
from workers.core.problems import ProblemKind

AUTHENTICATED = (problems.UNAUTHORIZED, problems.FORBIDDEN)
# headers a problem answer carries: always (True), or only sometimes (False)
_PROBLEM_HEADERS: dict[ProblemKind, dict[str, bool]] = {
    problems.UNAUTHORIZED: {"WWW-Authenticate": True},
    problems.RESULTS_NOT_AVAILABLE: {"Retry-After": False},  # while the audit is still active
    problems.TOO_MANY_ACTIVE_JOBS: {"Retry-After": True},
    problems.WORKERS_UNREACHABLE: {"Retry-After": True},
    problems.STORAGE_UNAVAILABLE: {"Retry-After": True},
    problems.DATABASE_UNAVAILABLE: {"Retry-After": True},
    problems.INSUFFICIENT_STORAGE: {"Retry-After": True},
}


def problem_responses(*kinds: ProblemKind) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer, one example per kind, with the headers they
    carry; every route may also meet a request validation problem (422), an internal error (500) and a
    job-store outage (503)."""
    by_status: dict[int, list[ProblemKind]] = {}
    for kind in (*kinds, problems.INVALID_REQUEST, problems.INTERNAL_ERROR, problems.DATABASE_UNAVAILABLE):
        if kind not in by_status.get(kind.status, []):
            by_status.setdefault(kind.status, []).append(kind)
    return {
        status: {
            "model": ProblemDetail,
            "description": " / ".join(kind.title for kind in group),
            "content": {
                PROBLEM_MEDIA_TYPE: {
                    "examples": {
                        kind.slug: {
                            "summary": kind.description,
                            "value": kind.body(kind.example) | {"instance": "/v1/..."},
                        }
                        for kind in group
                    }
                }
            },
        }
        | _headers_of(group)
        for status, group in sorted(by_status.items())
    }


def _headers_of(group: list[ProblemKind]) -> dict[str, Any]:
    """A header is required where every kind of the status always sends it."""
    names = dict.fromkeys(name for kind in group for name in _PROBLEM_HEADERS.get(kind, {}))
    if not names:
        return {}
    required = [n for n in names if all(_PROBLEM_HEADERS.get(kind, {}).get(n) for kind in group)]
    optional = tuple(n for n in names if n not in required)
    return {"headers": response_headers(*required, optional=optional)}
