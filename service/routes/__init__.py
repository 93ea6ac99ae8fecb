"""HTTP routes: thin; the work is in the service functions (``service.artifacts``, ``service.audits``)."""

from typing import Any

from service.problems import PROBLEM_MEDIA_TYPE, ProblemDetail
from workers import problems
from workers.problems import ProblemKind

AUTHENTICATED = (problems.UNAUTHORIZED, problems.FORBIDDEN)


def problem_responses(*kinds: ProblemKind) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer, one example per kind; every route may also
    meet a request validation problem (422), an internal error (500) and a job-store outage (503)."""
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
        for status, group in sorted(by_status.items())
    }
