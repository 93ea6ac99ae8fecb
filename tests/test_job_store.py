"""The job store's state machine, on SQLite and PostgreSQL, through the real Alembic migration."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import column, insert, table, text

from workers.core.store.database import make_engine, migrate
from workers.core.store.jobs import JobStore
from workers.core.store.states import JobResult, JobState, WrongState
from workers.core.store.tables import UtcDateTime


def _job(store: JobStore, key: str | None = None, body: dict | None = None):  # type: ignore[no-untyped-def]
    return store.jobs.create_job("local", body or {"model": "m"}, "hash", key, "cpu")


def test_a_new_job_is_queued_with_its_timestamp(store: JobStore) -> None:
    job, created = _job(store)
    assert created and job.state is JobState.queued and job.attempts == 0
    assert set(job.timestamps) == {JobState.queued}
    assert store.jobs.get_job(job.id) == job


def test_the_same_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, _ = _job(store, key="abc")
    again, created = _job(store, key="abc")
    assert not created and again.id == first.id


def _claim(store: JobStore, job_id: str):  # type: ignore[no-untyped-def]
    claimed = store.attempts.claim(job_id)
    assert claimed is not None and claimed.state is JobState.running
    return claimed


def _recover(store: JobStore, lease_s: float = 0, max_attempts: int = 3, time_limit_s: float = 60) -> list:
    """``lease_s=0``: every running attempt counts as lapsed (its worker died)."""
    return store.recovery.recover_lost_attempts(lease_s, max_attempts, time_limit_s)


def _assert_worker_lost(store: JobStore, job_id: str, attempts: int, detail_part: str) -> None:
    failed = store.jobs.get_job(job_id)
    assert failed is not None and failed.state is JobState.failed and failed.attempts == attempts
    assert failed.error is not None and failed.error["title"] == "Worker lost"
    assert detail_part in failed.error["detail"]


def test_cancelling_a_queued_job_cancels_it_and_its_delivery_is_skipped(store: JobStore) -> None:
    job, _ = _job(store)
    cancelled = store.jobs.request_cancel("local", job.id)
    assert cancelled is not None and cancelled.state is JobState.cancelled
    assert store.attempts.claim(job.id) is None
    with pytest.raises(WrongState):
        store.jobs.request_cancel("local", job.id)


def test_cancelling_a_running_job_waits_for_the_worker(store: JobStore) -> None:
    job, _ = _job(store)
    running = _claim(store, job.id)
    assert running.attempts == 1
    assert store.jobs.request_cancel("local", job.id).state is JobState.cancelling  # type: ignore[union-attr]
    assert store.attempts.cancel_requested(job.id)
    assert store.attempts.finish(job.id, JobState.cancelled, attempt=1)
    final = store.jobs.get_job(job.id)
    assert final is not None and set(final.timestamps) == {
        JobState.queued,
        JobState.running,
        JobState.cancelling,
        JobState.cancelled,
    }


def test_every_change_bumps_the_version_but_a_lease_renewal_does_not(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    store.attempts.report_progress(job.id, 1, "gradient: cascading", 1, 10)
    assert store.attempts.heartbeat(job.id, 1)
    after = store.jobs.get_job(job.id)
    assert after is not None and after.version == job.version + 2
    assert (after.progress_phase, after.progress_done, after.progress_total) == ("gradient: cascading", 1, 10)


def test_of_two_deliveries_of_one_job_one_claims_it(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    assert store.attempts.claim(job.id) is None
    assert store.jobs.get_job(job.id).attempts == 1  # type: ignore[union-attr]


def test_a_live_attempt_keeps_its_job(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    assert _recover(store, lease_s=60) == []
    assert store.jobs.get_job(job.id).state is JobState.running  # type: ignore[union-attr]


def test_a_lost_attempt_is_requeued_until_the_attempts_are_spent(store: JobStore) -> None:
    job, _ = _job(store)
    first = _claim(store, job.id)
    assert _recover(store, max_attempts=2) == [job.id]
    requeued = store.jobs.get_job(job.id)
    assert requeued is not None and requeued.state is JobState.queued and requeued.attempts == 1
    second = _claim(store, job.id)
    assert second.attempts == 2 and second.timestamps[JobState.running] == first.timestamps[JobState.running]
    assert _recover(store, max_attempts=2) == []
    _assert_worker_lost(store, job.id, attempts=2, detail_part="started 2 times")


def test_a_lost_attempt_past_the_hard_time_limit_fails(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    assert _recover(store, time_limit_s=0) == []
    _assert_worker_lost(store, job.id, attempts=1, detail_part="hard time limit")


def test_a_lost_attempt_of_a_job_being_cancelled_ends_cancelled(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    store.jobs.request_cancel("local", job.id)
    assert _recover(store) == []
    assert store.jobs.get_job(job.id).state is JobState.cancelled  # type: ignore[union-attr]


def test_an_attempt_presumed_lost_can_no_longer_write(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    _recover(store)
    assert not store.attempts.finish(job.id, JobState.cancelled, attempt=1)  # requeued, not yet claimed again
    assert store.jobs.get_job(job.id).state is JobState.queued  # type: ignore[union-attr]
    _claim(store, job.id)
    assert not store.attempts.heartbeat(job.id, 1)
    store.attempts.report_progress(job.id, 1, "stale", 5, 5)
    assert not store.attempts.finish(job.id, JobState.failed, attempt=1, error={"detail": "late"})
    current = store.jobs.get_job(job.id)
    assert current is not None and current.state is JobState.running and current.progress_phase is None
    assert store.attempts.heartbeat(job.id, 2)
    assert store.attempts.finish(
        job.id, JobState.succeeded, attempt=2, result=JobResult("a" * 64, 1, "b" * 64, 2)
    )


def test_queued_jobs_no_worker_will_take_are_due_for_dispatch(store: JobStore) -> None:
    job, _ = _job(store)
    assert (
        store.recovery.jobs_to_dispatch(grace_s=3600, redispatch_after_s=3600) == []
    )  # its request dispatches it
    assert store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=3600) == [(job.id, "cpu", 0, None)]
    store.recovery.mark_dispatched(job.id, attempts=0)
    assert store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=3600) == []
    (handed,) = store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=0)  # handed over, never started
    assert handed[:3] == (job.id, "cpu", 0) and handed[3] is not None and handed[3] <= datetime.now(UTC)
    _claim(store, job.id)
    _recover(store)
    store.recovery.mark_dispatched(job.id, attempts=0)  # a dispatch from before the attempt: does not count
    assert store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=3600) == [(job.id, "cpu", 1, None)]


def test_a_job_running_before_the_lease_upgrade_is_settled_after_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    migrate(engine, "0001")
    stamp = datetime.now(UTC) - timedelta(minutes=5)
    columns = {"id": "j1", "state": "running", "queue": "cpu", "request": "{}", "request_hash": "h"}
    counters = {"attempts": 1, "version": 2, "progress_done": 0, "progress_total": 0}
    stamps = {name: stamp for name in ("created_at", "updated_at", "queued_at", "running_at")}
    typed = [column(name, UtcDateTime()) for name in stamps]
    jobs = table("jobs", *map(column, [*columns, *counters]), *typed)
    with engine.begin() as connection:
        connection.execute(insert(jobs).values(**columns, **counters, **stamps))
    migrate(engine)
    store = JobStore(engine)
    assert store.recovery.recover_lost_attempts(lease_s=60, max_attempts=3, time_limit_s=3600) == ["j1"]
    assert store.jobs.get_job("j1").state is JobState.queued  # type: ignore[union-attr]
    engine.dispose()


def test_a_finished_job_stays_finished(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    result = JobResult("a" * 64, 10, "b" * 64, 20)
    assert store.attempts.finish(job.id, JobState.succeeded, attempt=1, result=result)
    assert not store.attempts.finish(job.id, JobState.failed, attempt=1, error={"detail": "late"})
    assert store.attempts.claim(job.id) is None and _recover(store) == []
    final = store.jobs.get_job(job.id)
    assert final is not None and final.state is JobState.succeeded and final.result == result
    assert final.error is None


def test_listing_pages_newest_first_and_filters_by_state(store: JobStore) -> None:
    ids = [_job(store)[0].id for _ in range(5)]
    store.jobs.request_cancel("local", ids[1])
    first = store.jobs.list_jobs("local", [], limit=2, before_seq=None)
    second = store.jobs.list_jobs("local", [], limit=2, before_seq=first[-1].seq)
    assert [j.id for j in first + second] == ids[::-1][:4]
    queued = store.jobs.list_jobs("local", [JobState.queued], limit=10, before_seq=None)
    assert [j.id for j in queued] == [i for i in ids[::-1] if i != ids[1]]


def test_an_artifact_is_recorded_once_per_kind(store: JobStore) -> None:
    sha = "c" * 64
    first, created = store.artifacts.add_artifact("local", sha, "probes", "npz", 100, {"images": 3})
    again, created_again = store.artifacts.add_artifact("local", sha, "probes", "npz", 100, {"images": 3})
    assert created and not created_again and again == first
    assert store.artifacts.add_artifact("local", sha, "training_data", "npz", 100, {})[1]
    assert first.details == {"images": 3} and first.created_at.tzinfo is not None


def test_a_poll_survives_the_database_dropping_its_connection(store: JobStore) -> None:
    job, _ = store.jobs.create_job("local", {"a": 1}, "hash", None, "cpu")

    async def polls() -> list[int | None]:
        versions = [await store.jobs.poll_version(job.id, "local")]
        if store.engine.dialect.name == "postgresql":  # as a restarted server would: every session ends
            with store.engine.connect() as connection:
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
        versions += [
            await store.jobs.poll_version(job.id, "local"),
            await store.jobs.poll_version("unknown", "local"),
        ]
        await store.aclose()
        return versions

    assert asyncio.run(polls()) == [1, 1, None]


def test_an_attempt_a_passing_fault_stopped_gives_the_job_back_then_fails_it_as_interrupted(
    store: JobStore,
) -> None:
    job, _ = _job(store)
    interrupted = {"type": "/problems/audit-interrupted", "title": "Audit interrupted", "status": 503}
    _claim(store, job.id)
    assert store.attempts.release(job.id, 2, max_attempts=2, error=interrupted) is None  # not its attempt
    assert store.attempts.release(job.id, 1, max_attempts=2, error=interrupted) is JobState.queued
    requeued = store.jobs.get_job(job.id)
    assert requeued is not None and requeued.attempts == 1
    assert (
        store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=3600) == []
    )  # not before the fault passes
    (handed,) = store.recovery.jobs_to_dispatch(grace_s=0, redispatch_after_s=0)
    assert handed[:3] == (job.id, "cpu", 1) and handed[3] is not None
    _claim(store, job.id)
    assert store.attempts.release(job.id, 2, max_attempts=2, error=interrupted) is JobState.failed
    failed = store.jobs.get_job(job.id)
    assert failed is not None and failed.error == interrupted
    assert store.jobs.rerun(failed) and not store.jobs.rerun(
        failed
    )  # the second is stale: it changed meanwhile
    again = store.jobs.get_job(job.id)
    assert again is not None and again.state is JobState.queued and again.attempts == 0
    assert again.error is None and JobState.failed not in again.timestamps


def test_a_cancel_asked_while_a_fault_stopped_the_attempt_cancels_the_job(store: JobStore) -> None:
    job, _ = _job(store)
    _claim(store, job.id)
    store.jobs.request_cancel("local", job.id)
    assert store.attempts.release(job.id, 1, max_attempts=3, error={}) is JobState.cancelled
