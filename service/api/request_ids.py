"""A request id per request: taken from the client's ``X-Request-ID`` when it is a sane token, made up
otherwise, returned in the response header and attached to every log record written while it runs
(``workers.core.logs``).

Unexpected errors are answered here, inside the request's id, as an internal-error problem naming it
(Starlette's own last-resort handler sits outside every middleware and would know no id)."""

import logging
import re
import uuid

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import outage_response, problem_response
from workers.core import logs, problems

log = logging.getLogger(__name__)

HEADER = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER.lower().encode(), b"").decode("latin-1")
        request_id = given if _SANE.match(given) else uuid.uuid4().hex
        token = logs.request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (HEADER.lower().encode(), request_id.encode()),
                ]
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as error:
            # outside FastAPI's handlers, inside the request's id: an outage answered as one, anything else
            # logged with the id and answered without internals
            response = None if started else outage_response(Request(scope), error)
            if response is None:
                log.exception("unhandled error on %s %s", scope["method"], scope["path"])
                if started:
                    raise
                detail = f"the server failed; quote request id {request_id} when reporting it"
                response = problem_response(Request(scope), problems.INTERNAL_ERROR, detail)
            await response(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)
