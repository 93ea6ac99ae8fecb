"""The units of fanned-out audits: who runs which, under a lease, so that a unit whose worker died runs
again and a unit runs to a counted result once (docs/decisions/0026).

A claim is a conditional update on the row's previous holder: of two claimants, one wins. A holder whose
lease lapsed loses the unit to the next claimant, and its ``finish`` then changes nothing.
"""

import os
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from workers.store.tables import UnitRow

PENDING, RUNNING, DONE = "pending", "running", "done"


def _now() -> datetime:
    return datetime.now(UTC)


def holder_token(role: str) -> str:
    """Names the claimant in the row: its role and process, for an operator reading the table."""
    return f"{role}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class UnitStore:
    def __init__(self, engine: Engine) -> None:
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def add(self, job_id: str, keys: list[str]) -> None:
        """Plan these units; a unit planned before (by an earlier attempt) keeps its state."""
        rows = [{"job_id": job_id, "key": key, "state": PENDING, "claims": 0} for key in keys]
        with self._session.begin() as session:
            session.execute(self._insert(UnitRow).values(rows).on_conflict_do_nothing())

    def claim(self, job_id: str, keys: list[str], holder: str, lease_s: float) -> str | None:
        """Take the first of ``keys`` that is pending or whose holder's lease lapsed; its key, or ``None``
        when every one is done or held."""
        lapsed = _now() - timedelta(seconds=lease_s)
        with self._session.begin() as session:
            rows = session.execute(
                select(UnitRow.key, UnitRow.claims).where(
                    UnitRow.job_id == job_id,
                    UnitRow.key.in_(keys),
                    or_(
                        UnitRow.state == PENDING, (UnitRow.state == RUNNING) & (UnitRow.heartbeat_at < lapsed)
                    ),
                )
            ).all()
        free = {key: claims for key, claims in rows}
        for key in (key for key in keys if key in free):
            if self._take(job_id, key, free[key], holder):
                return key
        return None

    def _take(self, job_id: str, key: str, claims: int, holder: str) -> bool:
        statement = (
            update(UnitRow)
            .where(UnitRow.job_id == job_id, UnitRow.key == key, UnitRow.claims == claims)
            .where(UnitRow.state != DONE)
            .values(state=RUNNING, holder=holder, claims=claims + 1, heartbeat_at=_now())
        )
        with self._session.begin() as session:
            return session.execute(statement).rowcount == 1  # type: ignore[attr-defined]

    def heartbeat(self, job_id: str, key: str, holder: str) -> bool:
        """Renew the holder's lease; ``False`` once the unit is another's or done."""
        return self._update_held(job_id, key, holder, {"heartbeat_at": _now()})

    def finish(self, job_id: str, key: str, holder: str) -> bool:
        """Mark the unit done once its result is stored; ``False`` when the holder had lost it (the result
        it stored is the same numbers as the new holder's: units are deterministic)."""
        return self._update_held(job_id, key, holder, {"state": DONE})

    def release(self, job_id: str, key: str, holder: str) -> None:
        """Give the unit back unfinished (its holder stopped or failed): the next claimant runs it."""
        self._update_held(job_id, key, holder, {"state": PENDING, "holder": None})

    def _update_held(self, job_id: str, key: str, holder: str, values: dict[str, object]) -> bool:
        statement = (
            update(UnitRow)
            .where(UnitRow.job_id == job_id, UnitRow.key == key)
            .where(UnitRow.holder == holder, UnitRow.state == RUNNING)
            .values(**values)
        )
        with self._session.begin() as session:
            return session.execute(statement).rowcount == 1  # type: ignore[attr-defined]

    def done(self, job_id: str, keys: list[str]) -> set[str]:
        with self._session.begin() as session:
            rows = session.execute(
                select(UnitRow.key).where(
                    UnitRow.job_id == job_id, UnitRow.key.in_(keys), UnitRow.state == DONE
                )
            )
            return {key for (key,) in rows}

    def holders(self, job_id: str) -> dict[str, tuple[str, str | None]]:
        """Each unit's state and holder (for tests and operators)."""
        with self._session.begin() as session:
            rows = session.execute(
                select(UnitRow.key, UnitRow.state, UnitRow.holder).where(UnitRow.job_id == job_id)
            )
            return {key: (state, holder) for key, state, holder in rows}

    def remove(self, job_id: str) -> None:
        with self._session.begin() as session:
            session.execute(delete(UnitRow).where(UnitRow.job_id == job_id))
