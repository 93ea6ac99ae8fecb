"""The units of fanned-out audits: who runs which, under a lease, so that a unit whose worker died runs
again and a unit runs to a counted result once (docs/decisions/0026).

A claim is a conditional update on the row's previous holder: of two claimants, one wins. A holder whose
lease lapsed loses the unit to the next claimant, and its ``finish`` then changes nothing.
"""

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import sessionmaker

from workers.core.store.tables import UnitRow

PENDING, RUNNING, DONE = "pending", "running", "done"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PlanId:
    """The plan of one attempt of a job: a new attempt plans anew (its device, batch sizes or engine
    version may differ, and units must add up to one audit)."""

    job_id: str
    attempt: int


def holder_token(role: str) -> str:
    """Names the claimant in the row: its role and process, for an operator reading the table."""
    return f"{role}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class UnitStore:
    def __init__(self, engine: Engine) -> None:
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def add(self, plan: PlanId, keys: list[str]) -> None:
        """Plan these units; a unit planned before (by an earlier attempt) keeps its state."""
        rows = [
            {"job_id": plan.job_id, "attempt": plan.attempt, "key": key, "state": PENDING, "claims": 0}
            for key in keys
        ]
        with self._session.begin() as session:
            session.execute(self._insert(UnitRow).values(rows).on_conflict_do_nothing())

    def claim(self, plan: PlanId, keys: list[str], holder: str, lease_s: float) -> str | None:
        """Take the first of ``keys`` that is pending or whose holder's lease lapsed; its key, or ``None``
        when every one is done or held."""
        lapsed = _now() - timedelta(seconds=lease_s)
        with self._session.begin() as session:
            rows = session.execute(
                select(UnitRow.key, UnitRow.claims).where(
                    *_of(plan),
                    UnitRow.key.in_(keys),
                    or_(
                        UnitRow.state == PENDING, (UnitRow.state == RUNNING) & (UnitRow.heartbeat_at < lapsed)
                    ),
                )
            ).all()
        free = {key: claims for key, claims in rows}
        for key in (key for key in keys if key in free):
            if self._take(plan, key, free[key], holder):
                return key
        return None

    def _take(self, plan: PlanId, key: str, claims: int, holder: str) -> bool:
        statement = (
            update(UnitRow)
            .where(*_of(plan), UnitRow.key == key, UnitRow.claims == claims)
            .where(UnitRow.state != DONE)
            .values(state=RUNNING, holder=holder, claims=claims + 1, heartbeat_at=_now())
        )
        with self._session.begin() as session:
            return session.execute(statement).rowcount == 1  # type: ignore[attr-defined]

    def heartbeat(self, plan: PlanId, key: str, holder: str) -> bool:
        """Renew the holder's lease; ``False`` once the unit is another's or done."""
        return self._update_held(plan, key, holder, {"heartbeat_at": _now()})

    def finish(self, plan: PlanId, key: str, holder: str) -> bool:
        """Mark the unit done once its result is stored; ``False`` when the holder had lost it (the result
        it stored is the same numbers as the new holder's: units are deterministic)."""
        return self._update_held(plan, key, holder, {"state": DONE})

    def release(self, plan: PlanId, key: str, holder: str) -> None:
        """Give the unit back unfinished (its holder stopped or failed): the next claimant runs it."""
        self._update_held(plan, key, holder, {"state": PENDING, "holder": None})

    def _update_held(self, plan: PlanId, key: str, holder: str, values: dict[str, object]) -> bool:
        statement = (
            update(UnitRow)
            .where(*_of(plan), UnitRow.key == key)
            .where(UnitRow.holder == holder, UnitRow.state == RUNNING)
            .values(**values)
        )
        with self._session.begin() as session:
            return session.execute(statement).rowcount == 1  # type: ignore[attr-defined]

    def done(self, plan: PlanId, keys: list[str]) -> set[str]:
        with self._session.begin() as session:
            rows = session.execute(
                select(UnitRow.key).where(*_of(plan), UnitRow.key.in_(keys), UnitRow.state == DONE)
            )
            return {key for (key,) in rows}

    def holders(self, plan: PlanId) -> dict[str, tuple[str, str | None]]:
        """Each unit's state and holder (for tests and operators)."""
        with self._session.begin() as session:
            rows = session.execute(select(UnitRow.key, UnitRow.state, UnitRow.holder).where(*_of(plan)))
            return {key: (state, holder) for key, state, holder in rows}

    def remove(self, job_id: str) -> None:
        """Every attempt's units of a job that ended."""
        with self._session.begin() as session:
            session.execute(delete(UnitRow).where(UnitRow.job_id == job_id))


def _of(plan: PlanId) -> tuple[Any, Any]:
    return UnitRow.job_id == plan.job_id, UnitRow.attempt == plan.attempt
