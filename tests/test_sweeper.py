"""The sweeper hands again to workers the jobs nobody holds, on SQLite and PostgreSQL."""

import pytest

from workers.config import Settings
from workers.dispatch import DispatchError
from workers.requests import WorkQueue
from workers.store.jobs import JobState, JobStore
from workers.sweeper import Sweeper


class RecordingDispatcher:
    """Records what it is handed; a broker that is down refuses everything."""

    name = "recording"

    def __init__(self) -> None:
        self.handed: list[tuple[str, WorkQueue]] = []
        self.down = False

    def start(self) -> None:
        pass

    def submit(self, job_id: str, work_queue: WorkQueue) -> None:
        if self.down:
            raise DispatchError("the broker is unreachable (test)")
        self.handed.append((job_id, work_queue))

    def check(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


def _sweeper(store: JobStore, dispatcher: RecordingDispatcher, lease_s: float) -> Sweeper:
    return Sweeper(store, dispatcher, Settings(lease_s=lease_s, max_attempts=3))


def test_a_job_never_dispatched_is_dispatched_once(store: JobStore, dispatcher: RecordingDispatcher) -> None:
    job, _ = store.create_job({"model": "m"}, "hash", None, "gpu")
    assert _sweeper(store, dispatcher, lease_s=3600).sweep() == 0  # its own request may still dispatch it
    sweeper = _sweeper(store, dispatcher, lease_s=1e-6)
    assert sweeper.sweep() == 1 and sweeper.sweep() == 0
    assert dispatcher.handed == [(job.id, WorkQueue.gpu)]


def test_a_job_whose_worker_died_is_requeued_and_dispatched(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    job, _ = store.create_job({"model": "m"}, "hash", None, "cpu")
    store.mark_dispatched(job.id, attempts=0)
    store.claim(job.id)
    assert _sweeper(store, dispatcher, lease_s=3600).sweep() == 0  # the attempt's lease holds
    assert _sweeper(store, dispatcher, lease_s=1e-6).sweep() == 1
    assert dispatcher.handed == [(job.id, WorkQueue.cpu)]
    requeued = store.get_job(job.id)
    assert requeued is not None and requeued.state is JobState.queued and requeued.attempts == 1


def test_jobs_the_broker_refused_are_dispatched_by_a_later_sweep(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    jobs = [store.create_job({"model": "m"}, "hash", None, "cpu")[0] for _ in range(2)]
    sweeper = _sweeper(store, dispatcher, lease_s=1e-6)
    dispatcher.down = True
    assert sweeper.sweep() == 0
    dispatcher.down = False
    assert sweeper.sweep() == 2 and dispatcher.handed == [(job.id, WorkQueue.cpu) for job in jobs]
