"""HTTP routes: thin; the work is in the service functions (``service.artifacts``, ``service.audits``)."""

from typing import Any

from service.problems import PROBLEM_MEDIA_TYPE, ProblemDetail


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give."""
    return {
        code: {"model": ProblemDetail, "content": {PROBLEM_MEDIA_TYPE: {}}, "description": "Problem details"}
        for code in codes
    }
