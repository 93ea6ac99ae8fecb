"""The log of the API, its audit processes and the Celery workers: text for a terminal, or JSON lines
(python-json-logger) for a log pipeline, every record naming the request and the job it was written for.

The ids travel in context variables: the API's request-id middleware sets the request's, whoever works on
a job binds its id (``bound_job``), so a line written deep in the engine still says which job it was.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import StrEnum

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

_TEXT = "%(asctime)s %(levelname)s %(name)s[%(process)d] [request %(request_id)s job %(job_id)s]: %(message)s"
_JSON_FIELDS = ("levelname", "name", "process", "message", "request_id", "job_id")
_JSON_NAMES = {"levelname": "level", "name": "logger", "process": "pid"}


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class ContextFilter(logging.Filter):
    """Gives every record ``request_id`` and ``job_id`` (``missing`` outside a request or a job)."""

    def __init__(self, missing: str | None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or self.missing
        record.job_id = job_id.get() or self.missing
        return True


def handler(log_format: LogFormat) -> logging.Handler:
    """A stderr handler that writes ``log_format``."""
    stream = logging.StreamHandler()
    if log_format is LogFormat.json:
        stream.addFilter(ContextFilter(missing=None))
        stream.setFormatter(JsonFormatter(list(_JSON_FIELDS), rename_fields=_JSON_NAMES, timestamp=True))
    else:
        stream.addFilter(ContextFilter(missing="-"))
        stream.setFormatter(logging.Formatter(_TEXT))
    return stream


def configure(log_format: LogFormat, level: int | str = logging.INFO) -> None:
    """Send every logger's records through one handler of ``log_format`` (replacing any set before)."""
    logging.basicConfig(level=level, handlers=[handler(log_format)], force=True)


@contextmanager
def bound_job(value: str) -> Iterator[None]:
    """Records written inside name the job ``value``."""
    token = job_id.set(value)
    try:
        yield
    finally:
        job_id.reset(token)
