"""The job store's state machine, on SQLite and PostgreSQL, through the real Alembic migration."""

import pytest

from workers.store.database import make_engine, migrate
from workers.store.jobs import JobResult, JobState, JobStore, WrongState


@pytest.fixture
def store(database_url: str) -> JobStore:
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # a second start finds the schema current
    yield JobStore(engine)
    engine.dispose()


def _job(store: JobStore, key: str | None = None, body: dict | None = None):  # type: ignore[no-untyped-def]
    return store.create_job(body or {"model": "m"}, "hash", key, "cpu")


def test_a_new_job_is_queued_with_its_timestamp(store: JobStore) -> None:
    job, created = _job(store)
    assert created and job.state is JobState.queued and job.attempts == 0
    assert set(job.timestamps) == {JobState.queued}
    assert store.get_job(job.id) == job


def test_the_same_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, _ = _job(store, key="abc")
    again, created = _job(store, key="abc")
    assert not created and again.id == first.id


def test_cancelling_a_queued_job_cancels_it_and_its_delivery_is_skipped(store: JobStore) -> None:
    job, _ = _job(store)
    cancelled = store.request_cancel(job.id)
    assert cancelled is not None and cancelled.state is JobState.cancelled
    assert store.start_attempt(job.id, max_attempts=3, time_limit_s=60) is None
    with pytest.raises(WrongState):
        store.request_cancel(job.id)


def test_cancelling_a_running_job_waits_for_the_worker(store: JobStore) -> None:
    job, _ = _job(store)
    running = store.start_attempt(job.id, max_attempts=3, time_limit_s=60)
    assert running is not None and running.state is JobState.running and running.attempts == 1
    assert store.request_cancel(job.id).state is JobState.cancelling  # type: ignore[union-attr]
    assert store.cancel_requested(job.id)
    assert store.finish(job.id, JobState.cancelled)
    final = store.get_job(job.id)
    assert final is not None and set(final.timestamps) == {
        JobState.queued,
        JobState.running,
        JobState.cancelling,
        JobState.cancelled,
    }


def test_every_change_bumps_the_version(store: JobStore) -> None:
    job, _ = _job(store)
    store.start_attempt(job.id, max_attempts=3, time_limit_s=60)
    store.report_progress(job.id, "gradient: cascading", 1, 10)
    after = store.get_job(job.id)
    assert after is not None and after.version == job.version + 2
    assert (after.progress_phase, after.progress_done, after.progress_total) == ("gradient: cascading", 1, 10)


def test_a_redelivered_job_runs_again_until_its_attempts_are_spent(store: JobStore) -> None:
    job, _ = _job(store)
    assert store.start_attempt(job.id, max_attempts=2, time_limit_s=60).attempts == 1  # type: ignore[union-attr]
    assert store.start_attempt(job.id, max_attempts=2, time_limit_s=60).attempts == 2  # type: ignore[union-attr] # worker lost
    assert store.start_attempt(job.id, max_attempts=2, time_limit_s=60) is None
    failed = store.get_job(job.id)
    assert failed is not None and failed.state is JobState.failed
    assert failed.error is not None and "delivered 2 times" in failed.error["detail"]


def test_a_redelivered_job_that_outlived_the_hard_time_limit_fails(store: JobStore) -> None:
    job, _ = _job(store)
    store.start_attempt(job.id, max_attempts=3, time_limit_s=60)
    assert store.start_attempt(job.id, max_attempts=3, time_limit_s=0) is None  # killed at the limit
    failed = store.get_job(job.id)
    assert failed is not None and failed.state is JobState.failed and failed.attempts == 1
    assert failed.error is not None and "hard time limit" in failed.error["detail"]


def test_a_finished_job_stays_finished(store: JobStore) -> None:
    job, _ = _job(store)
    store.start_attempt(job.id, max_attempts=3, time_limit_s=60)
    result = JobResult("a" * 64, 10, "b" * 64, 20)
    assert store.finish(job.id, JobState.succeeded, result=result)
    assert not store.finish(job.id, JobState.failed, error={"detail": "late"})
    final = store.get_job(job.id)
    assert final is not None and final.state is JobState.succeeded and final.result == result
    assert final.error is None


def test_listing_pages_newest_first_and_filters_by_state(store: JobStore) -> None:
    ids = [_job(store)[0].id for _ in range(5)]
    store.request_cancel(ids[1])
    first = store.list_jobs([], limit=2, before_seq=None)
    second = store.list_jobs([], limit=2, before_seq=first[-1].seq)
    assert [j.id for j in first + second] == ids[::-1][:4]
    queued = store.list_jobs([JobState.queued], limit=10, before_seq=None)
    assert [j.id for j in queued] == [i for i in ids[::-1] if i != ids[1]]


def test_an_artifact_is_recorded_once_per_kind(store: JobStore) -> None:
    sha = "c" * 64
    first, created = store.add_artifact(sha, "probes", "npz", 100, {"images": 3})
    again, created_again = store.add_artifact(sha, "probes", "npz", 100, {"images": 3})
    assert created and not created_again and again == first
    assert store.add_artifact(sha, "training_data", "npz", 100, {})[1]
    assert first.details == {"images": 3} and first.created_at.tzinfo is not None
