"""Run one delivery of a job: the same code behind the Celery task and the embedded worker.

The job store decides whether the delivery runs (``claim``); a thread renews the attempt's lease while
it runs; the engine writes into a work folder of this attempt; results are published with one rename
into the attempt's own results folder before the job is marked succeeded.
"""

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from workers.core import logs, problems
from workers.core.config import Settings
from workers.core.errors import AuditCancelled, AuditInputError
from workers.core.outages import DISK, OUTAGES, outage_of
from workers.core.requests import AuditRequest
from workers.core.storage import Storage
from workers.core.store.attempts import Attempts
from workers.core.store.jobs import JobStore
from workers.core.store.states import ACTIVE_STATES, Job, JobState
from workers.engine.audit import Progress, run_audit
from workers.engine.check_run import UnitExecutor
from workers.engine.html_report import write_html_report
from workers.engine.training_twins import DataTestInputs
from workers.worker.lease import Lease

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5  # at most two progress writes and two cancel reads per second


class SharedUnits(UnitExecutor, Protocol):
    """Units run by any worker that listens (``workers.worker.fan_out``); forgotten once the job has ended."""

    def close(self) -> None: ...


def execute_job(
    job_id: str,
    store: JobStore,
    storage: Storage,
    settings: Settings,
    fan_out: Callable[[Job, Path], SharedUnits | None] | None = None,
) -> JobState | None:
    """Run the job if it is due; the state it ended in, or ``None`` when there was nothing to run. Every
    log record written meanwhile names the job. Raises when the job store fails; a full disk or an
    unreachable object store gives the job back to the queue. ``fan_out`` may share the audit's units
    with other workers (given the job and its attempt's work folder)."""
    with logs.bound_job(job_id):
        started = time.monotonic()
        state = _execute(job_id, store, storage, settings, fan_out)
        if state is not None:
            log.info("audit %s after %.1f s", state, time.monotonic() - started)
        return state


def _execute(
    job_id: str,
    store: JobStore,
    storage: Storage,
    settings: Settings,
    fan_out: Callable[[Job, Path], SharedUnits | None] | None,
) -> JobState | None:
    job = store.attempts.claim(job_id)
    if job is None:
        log.info("job %s: nothing to run (finished, cancelled or held by another attempt)", job_id)
        return None
    attempt = job.attempts
    log.info("audit started (attempt %d)", attempt)
    work = storage.new_work_dir(job_id, attempt)
    shared: SharedUnits | None = None
    try:
        shared = _shared_units(fan_out, job, work)
        with Lease(
            lambda: store.attempts.heartbeat(job_id, attempt), settings.lease_s, f"job {job_id}"
        ) as lease:
            request = AuditRequest.model_validate(job.request)
            inputs = fetch_inputs(request, job.tenant, store, storage, work)
            throttle = Throttle(store.attempts, job_id, attempt, lease)
            report = run_audit(
                inputs["model"],
                inputs["probes"],
                request.settings,
                work / "out",
                on_progress=throttle.progress,
                should_cancel=throttle.cancel_requested,
                data_inputs=_data_inputs(request, inputs),
                executor=shared,
            )
            write_html_report(report, work / "out")
            result = storage.publish_results(job_id, attempt, work / "out")
            store.attempts.finish(job_id, JobState.succeeded, attempt=attempt, result=result)
    except AuditCancelled:
        store.attempts.finish(job_id, JobState.cancelled, attempt=attempt)
    except AuditInputError as error:
        refused = problems.AUDIT_REFUSED.body(
            problems.redact_paths(str(error), problems.server_roots(storage.root))
        )
        store.attempts.finish(job_id, JobState.failed, attempt=attempt, error=refused)
    except Exception as error:
        # a passing fault gives the job back; the engine's own fault or the soft time limit is recorded
        outage = outage_of(error)
        if outage is not None:
            _release(store, job_id, attempt, settings, outage, error)
        else:
            log.exception("job %s attempt %d failed", job_id, attempt)
            store.attempts.finish(
                job_id,
                JobState.failed,
                attempt=attempt,
                error=_internal_error(error, job_id, attempt, settings),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = store.jobs.get_job(job_id)
    if shared is not None and (final is None or final.state not in ACTIVE_STATES):
        shared.close()  # a released job keeps its finished units for the next attempt
    return None if final is None else final.state


def _shared_units(
    fan_out: Callable[[Job, Path], SharedUnits | None] | None, job: Job, work: Path
) -> SharedUnits | None:
    """Whether other workers help is an optimization: a broker that cannot say runs the audit here."""
    if fan_out is None:
        return None
    try:
        return fan_out(job, work)
    except Exception as error:  # kombu raises transport-specific errors
        log.warning("job %s runs on this worker alone: other workers not found (%s)", job.id, error)
        return None


def _release(
    store: JobStore, job_id: str, attempt: int, settings: Settings, outage: str, error: Exception
) -> None:
    """Not the job's fault: queued again (or failed as interrupted, a failure a resubmission reruns).
    Where the job store itself is out, this raises too, the lease lapses, and the sweeper requeues it."""
    OUTAGES.failed(outage, error, f"job {job_id} attempt {attempt}")
    what = "the service's disk was full" if outage == DISK else f"the {outage} was unreachable"
    detail = (
        f"{what} at each of {attempt} attempts; nothing is wrong with the request: submit it again with "
        "the same Idempotency-Key and it runs again"
    )
    state = store.attempts.release(
        job_id, attempt, settings.max_attempts, problems.AUDIT_INTERRUPTED.body(detail)
    )
    log.warning("job %s attempt %d stopped by a passing fault (%s): %s", job_id, attempt, what, state)


def _internal_error(error: Exception, job_id: str, attempt: int, settings: Settings) -> dict[str, Any]:
    """What the client reads of a failure inside the service: never the exception's text, but whether
    memory ran out (NumPy's MemoryError, torch's allocator on a CPU or a GPU), which the client can act on."""
    text = str(error)
    if isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return problems.AUDIT_PROCESS_STOPPED.body(
            f"the audit needed more memory than its process may use ({settings.audit_memory_limit_mib} MiB; "
            "0 means the machine's): audit fewer or smaller probe images, or set a smaller "
            "settings.batch_size or settings.memory_budget_mib"
        )
    return problems.AUDIT_FAILED.body(
        f"the audit failed inside the service (job {job_id}, attempt {attempt}); the service's log has the "
        "details under this job id"
    )


def fetch_inputs(
    request: AuditRequest, tenant: str, store: JobStore, storage: Storage, work: Path
) -> dict[str, Path]:
    """Each of the tenant's artifacts under its role's name and its format's suffix (the engine reads
    probes by suffix)."""
    folder = work / "inputs"
    folder.mkdir()
    inputs = {}
    for role, (sha256, kind) in request.artifacts().items():
        artifact = store.artifacts.get_artifact(tenant, sha256, kind)
        if artifact is None:
            raise AuditInputError(f"{role}: artifact {sha256} is no longer stored; upload it again")
        inputs[role] = storage.fetch_artifact(artifact, folder, role)
    return inputs


def _data_inputs(request: AuditRequest, inputs: dict[str, Path]) -> DataTestInputs | None:
    if not request.twins and request.training_data is None:
        return None
    return DataTestInputs(
        twins=tuple(inputs[f"twin_{k}"] for k in range(len(request.twins))),
        controls=tuple(inputs[f"control_{k}"] for k in range(len(request.controls))),
        training_data=inputs.get("training_data"),
    )


class Throttle:
    """Progress and cancel checks through the job store, at most every ``PROGRESS_INTERVAL_S``."""

    def __init__(self, attempts: Attempts, job_id: str, attempt: int, lease: Lease) -> None:
        self.attempts, self.job_id, self.attempt, self.lease = attempts, job_id, attempt, lease
        self._last_write = self._last_read = 0.0
        self._phase: str | None = None
        self._cancel = False

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        changed = progress.phase != self._phase or progress.done == progress.total
        if changed or now - self._last_write >= PROGRESS_INTERVAL_S:
            done, total = progress.done, progress.total
            with self._outage_passed_over("progress"):
                self.attempts.report_progress(self.job_id, self.attempt, progress.phase, done, total)
            self._last_write, self._phase = now, progress.phase

    def cancel_requested(self) -> bool:
        if self.lease.lost:
            return True
        now = time.monotonic()
        if not self._cancel and now - self._last_read >= PROGRESS_INTERVAL_S:
            with self._outage_passed_over("cancel check"):
                self._cancel = self.attempts.cancel_requested(self.job_id)
            self._last_read = now
        return self._cancel

    @contextlib.contextmanager
    def _outage_passed_over(self, what: str) -> Iterator[None]:
        """A job-store blip does not stop the audit: its progress shows later, a cancel is read next time
        (and an outage longer than the lease ends the attempt through the lease anyway)."""
        try:
            yield
        except Exception as error:
            outage = outage_of(error)
            if outage is None:
                raise
            OUTAGES.failed(outage, error, f"{what} of job {self.job_id}")
