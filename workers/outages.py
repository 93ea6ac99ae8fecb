"""Faults that pass: the job store or the disk unavailable for a while. Recognized wherever they surface,
answered as temporary (503, 507, a retried attempt), and logged once per outage, not once per failure.

A database outage reaches the code as SQLAlchemy's ``OperationalError``/``InterfaceError`` (connection
refused, dropped, server shutting down), psycopg's own where the API polls without SQLAlchemy, or a
``DBAPIError`` that invalidated its connection; a full disk
as an ``OSError`` with ``ENOSPC`` or ``EDQUOT``, often wrapped by the library that was writing. Torch-free.
"""

import errno
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from workers.object_store import StoreUnavailable

log = logging.getLogger(__name__)

DATABASE = "database"
BROKER = "broker"
DISK = "disk"
OBJECT_STORE = "object store"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# psycopg's own, raised where the API polls PostgreSQL without SQLAlchemy (``store.polls``)
_PSYCOPG_OUTAGES = (psycopg.OperationalError, psycopg.InterfaceError)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling, each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def outage_of(error: BaseException) -> str | None:
    """Which dependency's temporary failure ``error`` is (DATABASE, DISK, OBJECT_STORE), or None."""
    for link in _chain(error):
        if isinstance(link, (OperationalError, InterfaceError, *_PSYCOPG_OUTAGES)) or (
            isinstance(link, DBAPIError) and link.connection_invalidated
        ):
            return DATABASE
        if isinstance(link, OSError) and link.errno in _DISK_FULL:
            return DISK
        if isinstance(link, StoreUnavailable):
            return OBJECT_STORE
    return None


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class OutageLog:
    """One warning when a dependency starts failing and one line when it works again, per process."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, what: str, error: BaseException, where: str) -> None:
        with self._lock:
            if what in self._since:
                return
            self._since[what] = time.monotonic()
        log.warning("%s unavailable (%s in %s); retrying quietly until it is back", what, _name(error), where)

    def working(self, *what: str) -> None:
        for name in what:
            with self._lock:
                since = self._since.pop(name, None)
            if since is not None:
                log.warning("%s available again after %.0f s", name, time.monotonic() - since)

    def ongoing(self, what: str) -> bool:
        return what in self._since


def _name(error: BaseException) -> str:
    return type(error).__name__


OUTAGES = OutageLog()
