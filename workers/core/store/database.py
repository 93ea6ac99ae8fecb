"""Connecting to the job store and bringing its schema up to date with Alembic."""

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine that several threads (the API and the embedded worker) can share."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the worker's writes
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


class PollConnection:
    """The one-row read a status poll repeats, on PostgreSQL: one asyncio psycopg connection (the API
    answers polls on its event loop, without a thread hop or an ORM; psycopg serializes concurrent
    queries on it), in autocommit (no BEGIN and ROLLBACK round trips). Connected on first use, on the
    event loop that uses it; a dropped connection is replaced and the read tried once more."""

    def __init__(self, engine: Engine) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: psycopg.AsyncConnection | None = None
        self._connecting = asyncio.Lock()  # concurrent first polls open one connection, not one each

    async def scalar(self, query: str, parameters: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            try:
                connection = await self._connected()
                row = await (await connection.execute(query, parameters)).fetchone()
                return None if row is None else row[0]
            except psycopg.OperationalError:
                await self.close()
                if attempt == 2:
                    raise
        return None

    async def _connected(self) -> psycopg.AsyncConnection:
        async with self._connecting:
            if self._connection is None or self._connection.closed:
                self._connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema (to the newest revision by default); concurrent starters on PostgreSQL take
    turns."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(7261)"))
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
