"""Faults that pass: the job store or the disk unavailable for a while. Recognized wherever they surface,
answered as temporary (503, 507, a retried attempt), and logged once per outage, not once per failure.

A database outage reaches the code as a driver error that says the server is unreachable, restarting,
busy or out of resources (psycopg's SQLSTATE classes 08, 53 and 57P0x, or no SQLSTATE at all; SQLite's
BUSY, LOCKED, IOERR, FULL, CANTOPEN), through SQLAlchemy or not, or as a connection pool that timed out;
a wrong statement, a missing table or a refused login is not one; a full disk
as an ``OSError`` with ``ENOSPC`` or ``EDQUOT``, often wrapped by the library that was writing. Torch-free.
"""

import errno
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from workers.core.object_store import StoreUnavailable

log = logging.getLogger(__name__)

DATABASE = "database"
BROKER = "broker"
DISK = "disk"
OBJECT_STORE = "object store"
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite's result codes of a store that is busy, locked or out of disk, not of a wrong statement
_SQLITE_PASSING = frozenset({5, 6, 10, 13, 14})  # BUSY, LOCKED, IOERR, FULL, CANTOPEN
# PostgreSQL's SQLSTATE classes and codes of a server that is unreachable, restarting or out of resources;
# an error without SQLSTATE never reached a server
_SQLSTATE_PASSING = ("08", "53", "57P01", "57P02", "57P03")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from or while handling (unless suppressed), each once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _database_passing(error: BaseException) -> bool:
    """Whether a database error is the store being out (unreachable, restarting, busy, full), not a
    statement or schema the code got wrong, a refused login or a missing database."""
    if isinstance(error, PoolTimeout):
        return True
    driver = error.orig if isinstance(error, DBAPIError) else error
    if isinstance(driver, sqlite3.Error):
        return (getattr(driver, "sqlite_errorcode", 0) or 0) & 0xFF in _SQLITE_PASSING
    if isinstance(driver, psycopg.Error):
        state = driver.sqlstate
        return state is None or state.startswith(_SQLSTATE_PASSING)
    return isinstance(error, DBAPIError) and (
        error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))
    )


def outage_of(error: BaseException) -> str | None:
    """Which dependency's temporary failure ``error`` is (DATABASE, DISK, OBJECT_STORE), or None."""
    for link in _chain(error):
        if isinstance(link, (DBAPIError, PoolTimeout, psycopg.Error)):
            return DATABASE if _database_passing(link) else None
        if isinstance(link, OSError) and link.errno in _DISK_FULL:
            return DISK
        if isinstance(link, StoreUnavailable):
            return OBJECT_STORE
    return None


def require_free_disk(folder: Path, floor_mib: int) -> None:
    """Raise ENOSPC (a full disk, to every caller) when ``folder`` has less than ``floor_mib`` MiB free:
    an upload or a new audit there would fill it."""
    if shutil.disk_usage(folder).free < floor_mib * 1024**2:
        raise OSError(errno.ENOSPC, f"less than {floor_mib} MiB free in the data dir")


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
        log.warning(
            "%s unavailable (%s: %s, in %s); retrying quietly until it is back",
            what,
            type(error).__name__,
            _first_line(error),
            where,
        )

    def working(self, *what: str) -> None:
        for name in what:
            with self._lock:
                since = self._since.pop(name, None)
            if since is not None:
                log.warning("%s available again after %.0f s", name, time.monotonic() - since)

    def ongoing(self, what: str) -> bool:
        return what in self._since


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else ""


OUTAGES = OutageLog()
