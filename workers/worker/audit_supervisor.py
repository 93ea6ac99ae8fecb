"""The embedded worker's side of an audit process (``workers.worker.audit_process``): one fresh process
per job, waited for, killed with its process group past the hard time limit, and the job it leaves held
settled, so that no model takes the API process down and no job is left running with nobody on it.
"""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any

from workers.core import logs, problems
from workers.core.config import Settings
from workers.core.outages import DISK, OUTAGES, require_free_disk
from workers.core.storage import Storage
from workers.core.store.jobs import JobStore
from workers.core.store.states import HELD_STATES, JobState
from workers.worker.audit_process import EXIT_STORE_FAILED, MODULE

log = logging.getLogger(__name__)


class AuditSupervisor:
    """Runs jobs one at a time, each in its own audit process; ``stop`` kills the one running."""

    def __init__(self, store: JobStore, storage: Storage, settings: Settings) -> None:
        self.store, self.storage, self.settings = store, storage, settings
        self._lock = threading.Lock()
        self._stopping = False
        self._process: subprocess.Popen[bytes] | None = None

    def run(self, job_id: str) -> None:
        """Run the job in a new audit process and wait for it; settle the job if the process ended
        abnormally. Raises only when the job store does."""
        with logs.bound_job(job_id):
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        job = self.store.jobs.get_job(job_id)
        if job is None or job.state is not JobState.queued:
            return  # finished, cancelled or held by another attempt: not worth starting an interpreter
        try:
            require_free_disk(self.storage.root, self.settings.min_free_disk_mib)
        except OSError as low:
            OUTAGES.failed(DISK, low, f"embedded worker, job {job_id}")
            return  # left queued: the sweeper hands it over again once no message waits
        OUTAGES.working(DISK)
        try:
            process = self._start(job_id)
        except OSError:
            log.exception("job %s: the audit process could not be started", job_id)
            self._settle(job_id, job.attempts, returncode=None, timed_out=False)
            return
        if process is None:
            return
        timed_out = self._wait(process)
        with self._lock:
            self._process = None
            stopped = self._stopping
        if stopped:
            self._report_interrupted(job_id)
        elif timed_out or process.returncode not in (0, EXIT_STORE_FAILED):
            self._settle(job_id, job.attempts, process.returncode, timed_out)

    def stop(self) -> None:
        """Kill the running audit process; its job stays held until its lease lapses and the sweeper
        requeues it, as when the whole service is killed."""
        with self._lock:
            self._stopping = True
            if self._process is not None:
                _kill_group(self._process)

    def _report_interrupted(self, job_id: str) -> None:
        job = self.store.jobs.get_job(job_id)
        if job is not None and job.state in HELD_STATES:
            log.warning("job %s: audit killed on shutdown; requeued once its lease lapses", job_id)

    def _start(self, job_id: str) -> subprocess.Popen[bytes] | None:
        """The process, in a session of its own (its group is killed as one), given the settings the API
        was created with; ``None`` once stopping."""
        with self._lock:
            if self._stopping:
                return None
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE, job_id], stdin=subprocess.PIPE, start_new_session=True
            )
            self._process = process
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it ended at once; its exit status says how
            process.stdin.write(self.settings.model_dump_json().encode() + b"\n")
            process.stdin.flush()  # stdin stays open: the process ends itself when it closes
        return process

    def _wait(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether the process ran past the hard time limit (and was killed)."""
        try:
            process.wait(timeout=self.settings.hard_time_limit_s)
            return False
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            return True
        finally:
            assert process.stdin is not None
            process.stdin.close()

    def _settle(self, job_id: str, attempts_before: int, returncode: int | None, timed_out: bool) -> None:
        """Fail the job (cancel it, if it was being cancelled) when the process's attempt still holds it.
        A process that ended before claiming the job leaves it queued: it is claimed here and failed the
        same way, as a service fault, so that it is not handed to the same fault again and again."""
        job = self.store.jobs.get_job(job_id)
        never_claimed = job is not None and job.state is JobState.queued and job.attempts == attempts_before
        if never_claimed:
            job = self.store.attempts.claim(job_id)
        if job is None or job.state not in HELD_STATES or job.attempts != attempts_before + 1:
            return  # finished by the process itself, or taken over by another attempt
        error = self._error(job_id, returncode, timed_out, started=not never_claimed)
        log.error("job %s: %s", job_id, error["detail"])
        if job.state is JobState.cancelling:
            self.store.attempts.finish(job_id, JobState.cancelled, attempt=job.attempts)
        else:
            self.store.attempts.finish(job_id, JobState.failed, attempt=job.attempts, error=error)
        shutil.rmtree(self.storage.work_dir(job_id, job.attempts), ignore_errors=True)

    def _error(self, job_id: str, returncode: int | None, timed_out: bool, started: bool) -> dict[str, Any]:
        """What happened, in a client's words (no paths, no traceback), as the job's problem details."""
        if timed_out:
            detail = f"the audit ran past the time limit of {self.settings.hard_time_limit_s} s"
            return problems.AUDIT_PROCESS_STOPPED.body(detail)
        if returncode is None or (returncode > 0 and not started):  # the service's fault, not the model's
            detail = (
                f"the audit process could not start (job {job_id}); the service's log has the details under "
                "this job id"
            )
            return problems.AUDIT_FAILED.body(detail)
        if returncode > 0:
            return problems.AUDIT_PROCESS_STOPPED.body(
                f"the audit process stopped with exit status {returncode}"
            )
        number, limit = -returncode, f"the limit is {self.settings.audit_memory_limit_mib} MiB"
        if number == signal.SIGKILL:
            detail = f"the audit process was killed by signal 9 (SIGKILL), for example out of memory: {limit}"
        else:
            detail = (
                f"the audit process crashed with signal {number} ({_signal_name(number)}): the model crashed "
                f"its runtime or exceeded the memory limit ({limit})"
            )
        return problems.AUDIT_PROCESS_STOPPED.body(detail)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal
        return "unnamed"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process and whatever it started; nothing when it was already reaped."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
