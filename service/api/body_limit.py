"""A cap on request bodies other than uploads (those stream to disk under their own cap).

Checked from Content-Length before the body is read, and counted while it is read when the length is not
declared, so a client cannot make the API hold an arbitrarily large JSON document in memory.
"""

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response
from workers.core import problems


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, upload_paths: frozenset[str]) -> None:
        self.app, self.max_bytes, self.upload_paths = app, max_bytes, upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in self.upload_paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(Request(scope), problems.BODY_TOO_LARGE, self._detail())
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI lets an HTTPException through its body reading
                raise HTTPException(413, self._detail())
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes (SALIENCY_MAX_REQUEST_BYTES)"
