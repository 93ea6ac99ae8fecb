"""The sweeper hands again to workers the jobs nobody holds, on SQLite and PostgreSQL."""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from workers.core.config import Settings
from workers.core.report import ARCHIVE_FILE, HTML_FILE, REPORT_FILE
from workers.core.requests import WorkQueue
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.core.store.states import JobState
from workers.worker.dispatch import DispatchError
from workers.worker.sweeper import Sweeper


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

    def waiting(self, work_queue: WorkQueue) -> int:
        """Messages handed but not taken: a test takes them by clearing ``handed``."""
        return sum(1 for _, queue in self.handed if queue is work_queue)

    def check(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


def _file(data: bytes) -> Path:
    path = Path(tempfile.mkdtemp()) / "file"
    path.write_bytes(data)
    return path


def _sweeper(store: JobStore, dispatcher: RecordingDispatcher, lease_s: float, **settings: float) -> Sweeper:
    storage = Storage(Path(tempfile.mkdtemp()))
    storage.prepare()
    return Sweeper(store, storage, dispatcher, Settings(lease_s=lease_s, max_attempts=3, **settings))


def test_a_job_never_dispatched_is_dispatched_once(store: JobStore, dispatcher: RecordingDispatcher) -> None:
    job, _ = store.jobs.create_job("local", {"model": "m"}, "hash", None, "gpu")
    assert _sweeper(store, dispatcher, lease_s=3600).sweep() == 0  # its own request may still dispatch it
    sweeper = _sweeper(store, dispatcher, lease_s=1e-6)
    assert sweeper.sweep() == 1 and sweeper.sweep() == 0
    assert dispatcher.handed == [(job.id, WorkQueue.gpu)]


def test_a_job_whose_worker_died_is_requeued_and_dispatched(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    job, _ = store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")
    store.recovery.mark_dispatched(job.id, attempts=0)
    store.attempts.claim(job.id)
    assert _sweeper(store, dispatcher, lease_s=3600).sweep() == 0  # the attempt's lease holds
    assert _sweeper(store, dispatcher, lease_s=1e-6).sweep() == 1
    assert dispatcher.handed == [(job.id, WorkQueue.cpu)]
    requeued = store.jobs.get_job(job.id)
    assert requeued is not None and requeued.state is JobState.queued and requeued.attempts == 1


def test_jobs_the_broker_refused_are_dispatched_by_a_later_sweep(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    jobs = [store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")[0] for _ in range(2)]
    sweeper = _sweeper(store, dispatcher, lease_s=1e-6)
    dispatcher.down = True
    assert sweeper.sweep() == 0
    dispatcher.down = False
    assert sweeper.sweep() == 2 and dispatcher.handed == [(job.id, WorkQueue.cpu) for job in jobs]


def test_a_handed_job_no_worker_started_is_handed_again_once_its_queue_holds_no_message(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    """A worker that took the message and gave up during a job-store outage leaves the job queued."""
    waiting, lost = (store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")[0] for _ in range(2))
    sweeper = _sweeper(store, dispatcher, lease_s=1e-6, redispatch_after_s=1e-6)
    assert sweeper.sweep() == 2
    time.sleep(0.01)
    assert sweeper.sweep() == 0  # two messages wait in the queue: either may be the job's own
    dispatcher.handed.remove((lost.id, WorkQueue.cpu))  # a worker took one message and dropped it
    assert sweeper.sweep() == 0  # one still waits: it may be either job's
    dispatcher.handed.clear()  # the other was taken too: the queue is empty, both jobs still queued
    time.sleep(0.01)
    assert sweeper.sweep() == 2
    assert {job_id for job_id, _ in dispatcher.handed} == {waiting.id, lost.id}
    store.attempts.claim(waiting.id)
    dispatcher.handed.clear()
    time.sleep(0.01)
    holding = _sweeper(store, dispatcher, lease_s=3600, redispatch_after_s=1e-6)  # the attempt is alive
    assert holding.sweep() == 1 and dispatcher.handed == [(lost.id, WorkQueue.cpu)]  # a started job stays


# --- retention -----------------------------------------------------------------------------------------


def test_finished_jobs_expire_with_their_results_and_active_ones_stay(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    sweeper = _sweeper(store, dispatcher, lease_s=3600, retention_s=0.05)
    finished, _ = store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")
    running, _ = store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")
    for job in (finished, running):
        store.attempts.claim(job.id)
    out = Path(tempfile.mkdtemp())
    for name in (REPORT_FILE, HTML_FILE, ARCHIVE_FILE):
        (out / name).write_text("{}")
    result = sweeper.storage.publish_results(finished.id, 1, out)
    store.attempts.finish(finished.id, JobState.succeeded, attempt=1, result=result)
    time.sleep(0.1)
    assert sweeper.expire() == 1
    assert store.jobs.get_job(finished.id) is None
    assert sweeper.storage.open_result(finished.id, 1, REPORT_FILE) is None
    assert store.jobs.get_job(running.id) is not None


def test_artifacts_no_job_names_expire_and_a_blob_goes_with_its_last_owner(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    sweeper = _sweeper(store, dispatcher, lease_s=3600, retention_s=0.05)
    used, unused = "1" * 64, "2" * 64
    for sha in (used, unused):
        store.artifacts.add_artifact("local", sha, "model", "onnx", 10, {})
        sweeper.storage.objects.put(f"blobs/{sha[:2]}/{sha}", _file(b"x"))
    store.artifacts.add_artifact("other", used, "model", "onnx", 10, {})
    store.jobs.create_job("local", {"model": used, "probes": "3" * 64}, "hash", None, "cpu")
    time.sleep(0.1)
    sweeper.expire()
    assert store.artifacts.get_artifact("local", used, "model") is not None
    assert store.artifacts.get_artifact("other", used, "model") is None  # no job of that tenant names it
    assert store.artifacts.get_artifact("local", unused, "model") is None
    assert sweeper.storage.has_blob(used) and not sweeper.storage.has_blob(unused)


def test_a_partial_upload_whose_receiving_process_died_is_removed_by_the_next_sweep(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    """An API process killed mid-upload leaves its partial file; it does not wait for the hour-long rule."""
    sweeper = _sweeper(store, dispatcher, lease_s=3600, abandoned_upload_s=3600)
    child = subprocess.Popen(["true"])
    child.wait()
    dead_pid = child.pid
    ours = sweeper.storage.new_upload(100, "model.onnx")
    ours.write(b"partial")
    orphan = ours.path.parent.with_name(ours.path.parent.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    shutil.copytree(ours.path.parent, orphan)
    recent = sweeper.storage.new_upload(100, "probes.npz")
    recent_orphan = recent.path.parent.with_name(f"upload-{dead_pid}-recent")
    recent.path.parent.rename(recent_orphan)
    quiet = time.time() - 60
    for path in (orphan, *orphan.iterdir()):
        os.utime(path, (quiet, quiet))
    sweeper.expire()
    assert not orphan.exists()
    assert ours.path.exists()  # its process (this one) is alive
    assert recent_orphan.exists()  # written to moments ago: maybe a process this one cannot see


def test_abandoned_uploads_and_stale_work_folders_are_removed_but_not_a_running_attempts(
    store: JobStore, dispatcher: RecordingDispatcher
) -> None:
    sweeper = _sweeper(store, dispatcher, lease_s=3600, abandoned_upload_s=60)
    job, _ = store.jobs.create_job("local", {"model": "m"}, "hash", None, "cpu")
    store.attempts.claim(job.id)
    storage = sweeper.storage
    old = time.time() - 120
    abandoned = storage.new_upload(100, "model.onnx")
    stale, held = storage.new_work_dir("gone", 1), storage.new_work_dir(job.id, 1)
    stale_helper, helper = storage.helper_dir("gone", 1), storage.helper_dir(job.id, 1)
    fresh = storage.new_upload(100, "probes.npz")
    for folder in (stale_helper, helper):
        folder.mkdir()
    for folder in (abandoned.path.parent, stale, held, stale_helper, helper):
        os.utime(folder, (old, old))
    sweeper.expire()
    assert not abandoned.path.parent.exists() and not stale.exists() and not stale_helper.exists()
    assert held.exists() and helper.exists() and fresh.path.parent.exists()
