"""The OpenAPI document, written for generated clients (docs/decisions/0021).

- Every operation id is its route's name: the route function's name, or ``name=`` where a factory makes
  the routes (``submit_audit``, ``get_report``, ``upload_model``...), never FastAPI's path-derived ids.
- Every response declares the headers the service sends with it (``response_headers``); ``X-Request-ID``,
  which the request-id middleware adds to every answer, is declared once and referenced from each.
- Problem answers are described under application/problem+json only (FastAPI puts a response model under
  application/json).
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service.api.problems import PROBLEM_MEDIA_TYPE
from service.api.request_ids import HEADER as REQUEST_ID

_INTEGER = {"type": "integer", "minimum": 0}
_STRING = {"type": "string"}
# name -> (description, schema) of each header the service sends
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Location": ("Where the resource is (a path of this API, or a signed object-store URL)", _STRING),
    "Retry-After": ("Seconds to wait before polling or trying again", _INTEGER),
    "ETag": (
        "A job's id and version (a poll with it in If-None-Match answers 304 while the job is unchanged), "
        "or a result file's sha256",
        _STRING,
    ),
    "Idempotent-Replayed": (
        "'true' when the Idempotency-Key had already made this job: nothing new was queued",
        {"type": "string", "enum": ["true"]},
    ),
    "X-Checksum-SHA256": (
        "sha256 of the file, hex (the job's result names the same)",
        {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    ),
    "Repr-Digest": ("sha256 of the file as RFC 9530 writes it: sha-256=:<base64>:", _STRING),
    "Content-Length": ("Size of the file in bytes", _INTEGER),
    "Content-Disposition": ("attachment (inline for the HTML report) with the file name", _STRING),
    "WWW-Authenticate": ("The Bearer challenge", _STRING),
}
_REQUEST_ID = {
    "description": "Names the request in the service's log: the client's own X-Request-ID when it is 1-64 "
    "of A-Z a-z 0-9 . _ -, else one made up. A 500 answer quotes it.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}


def response_headers(*required: str, optional: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """OpenAPI header objects: ``required`` ones come with every answer of the status, ``optional`` with
    some (``Retry-After`` only while a job is active, for instance)."""
    return {
        name: {"description": HEADERS[name][0], "required": name in required, "schema": HEADERS[name][1]}
        for name in (*required, *optional)
    }


def operation_id(route: APIRoute) -> str:
    """The route's name: its function's name, or the ``name=`` a route factory gives."""
    return route.name


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, finished as the module docstring says; built once."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema["components"]["headers"] = {REQUEST_ID: _REQUEST_ID}
        for path in schema["paths"].values():
            for operation in path.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    if PROBLEM_MEDIA_TYPE in content and "application/json" in content:
                        content[PROBLEM_MEDIA_TYPE]["schema"] = content.pop("application/json")["schema"]
                    request_id = {"$ref": f"#/components/headers/{REQUEST_ID}"}
                    response["headers"] = response.get("headers", {}) | {REQUEST_ID: request_id}  # a copy
        app.openapi_schema = schema
    return app.openapi_schema
