"""Job service functions: submit (idempotent, within the tenant's limits), read, list, cancel, delete, and
locate results. Every function acts for one tenant: another tenant's jobs are not found."""

import base64
import binascii
import hashlib
import json
import logging
import math

from service.api.auth import Caller
from service.api.callback_urls import refusal
from service.api.job_views import JobView
from service.api.problems import Problem, not_found
from service.api.runtime import Runtime
from workers.core import logs, problems
from workers.core.audit_settings import AuditSettings
from workers.core.object_store import StoredObject
from workers.core.requests import ArtifactKind, AuditRequest, WorkQueue
from workers.core.store.artifacts import Artifact
from workers.core.store.states import TERMINAL_STATES, Job, JobState, WrongState
from workers.worker.dispatch import DispatchError
from workers.worker.sweeper import dispatch_job

log = logging.getLogger(__name__)

_UPLOAD_ROUTES = {
    ArtifactKind.model: "/v1/models",
    ArtifactKind.probes: "/v1/probe-sets",
    ArtifactKind.training_data: "/v1/training-sets",
}
_ARRAY_FORMATS = ("npy", "npz")


def request_hash(request: AuditRequest) -> str:
    """Of the request with every default filled in: omitting a default is the same request as stating it."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_audit(
    request: AuditRequest, idempotency_key: str | None, caller: Caller, runtime: Runtime
) -> tuple[Job, bool]:
    """The queued job, and whether this call created it (``False``: an idempotent replay)."""
    digest = request_hash(request)
    if idempotency_key is not None:
        earlier = runtime.store.jobs.get_job_by_key(caller.tenant, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest, caller, runtime), False
    _check_inputs(request, caller, runtime)
    if request.callback_url is not None:
        refused = refusal(str(request.callback_url), runtime.webhooks.allowed)
        if refused is not None:
            raise Problem(problems.CALLBACK_URL_REFUSED, refused.detail)
    _check_active_jobs(caller, runtime)
    job, created = runtime.store.jobs.create_job(
        caller.tenant, request.model_dump(mode="json"), digest, idempotency_key, request.queue
    )
    if not created:
        return _replay(job, digest, caller, runtime), False
    with logs.bound_job(job.id):
        log.info("audit queued for tenant %s on %s", caller.tenant, request.queue.value)
    try:
        dispatch_job(runtime.store, runtime.dispatcher, job.id, request.queue, job.attempts)
    except DispatchError:
        runtime.store.jobs.delete_job(job.id)
        raise Problem(
            problems.WORKERS_UNREACHABLE,
            "the broker is unreachable; nothing was queued, retry later",
            {"Retry-After": "10"},
        ) from None
    return job, True


def _replay(job: Job, digest: str, caller: Caller, runtime: Runtime) -> Job:
    """The job the key made; one that a passing fault failed (``audit-interrupted``) is queued again."""
    if job.request_hash != digest:
        raise Problem(
            problems.IDEMPOTENCY_KEY_REUSED,
            f"this Idempotency-Key was used for job {job.id} with a different request body; use a new key "
            "for a new request",
        )
    retryable = job.state is JobState.failed and (job.error or {}).get("type") in problems.RETRYABLE_FAILURES
    if retryable:
        _check_active_jobs(caller, runtime)
    if retryable and runtime.store.jobs.rerun(job):
        with logs.bound_job(job.id):
            log.info("audit queued again: its last run was interrupted by a passing fault")
        try:
            dispatch_job(runtime.store, runtime.dispatcher, job.id, WorkQueue(job.queue), 0)
        except DispatchError:
            log.warning("job %s queued again; the sweeper dispatches it once the broker is back", job.id)
    return runtime.store.jobs.get_job(job.id) or job


def _check_active_jobs(caller: Caller, runtime: Runtime) -> None:
    limit = runtime.settings.max_active_jobs
    if runtime.store.jobs.count_active_jobs(caller.tenant) >= limit:
        raise Problem(
            problems.TOO_MANY_ACTIVE_JOBS,
            f"this tenant has {limit} queued or running audits, as many as it may; submit again once one "
            "has finished",
            {"Retry-After": str(runtime.settings.retry_after_s * 5)},  # an audit takes longer than a poll
        )


def _check_inputs(request: AuditRequest, caller: Caller, runtime: Runtime) -> None:
    """Every artifact uploaded by this tenant as the right kind, and the settings within what the probe
    set's headers allow. Nothing is decoded here: the worker reads the files."""
    stored: dict[str, Artifact] = {}
    for role, (sha256, kind) in request.artifacts().items():
        artifact = runtime.store.artifacts.get_artifact(caller.tenant, sha256, kind)
        if artifact is None:
            raise Problem(
                problems.UNKNOWN_ARTIFACT,
                f"{role}: no {kind.value} artifact has sha256 {sha256}; upload it to "
                f"{_UPLOAD_ROUTES[kind]} first",
            )
        stored[role] = artifact
    settings = request.settings
    if settings.max_images > runtime.settings.max_probe_images:
        raise Problem(
            problems.INVALID_REQUEST,
            f"settings.max_images may be at most {runtime.settings.max_probe_images}",
        )
    for role in ("probes", "training_data"):  # the worker decodes both with these settings
        if role in stored:
            _check_image_set(role, stored[role], settings, runtime)


def _check_image_set(role: str, images: Artifact, settings: AuditSettings, runtime: Runtime) -> None:
    """From what the upload's headers recorded: nothing is decoded here."""
    preprocessing = settings.preprocessing
    if images.format in _ARRAY_FORMATS:
        declared = [name for name in ("size", "channels") if getattr(preprocessing, name) is not None]
        if declared:
            raise Problem(
                problems.SETTINGS_MISMATCH,
                f"{role}: preprocessing {' and '.join(declared)}: for image files only; arrays are never "
                "resized or re-channelled",
            )
    elif preprocessing.size is not None:
        count = int(images.details.get("images", 0))
        if role == "probes":
            count = min(count, settings.max_images)
        pixels = count * math.prod(preprocessing.size) * (preprocessing.channels or 3)
        if pixels > runtime.settings.max_probe_set_pixels:
            raise Problem(
                problems.SETTINGS_MISMATCH,
                f"{role}: {count} images resized to {preprocessing.size[0]} x {preprocessing.size[1]} make "
                f"{pixels} pixel values; an image set may hold at most "
                f"{runtime.settings.max_probe_set_pixels}",
            )


async def job_view(job_id: str, caller: Caller, runtime: Runtime) -> JobView:
    view = await runtime.job_views.get(job_id, caller.tenant)
    if view is None:
        raise not_found(f"audit {job_id}")
    return view


def get_job(job_id: str, caller: Caller, runtime: Runtime) -> Job:
    job = runtime.store.jobs.get_job(job_id, caller.tenant)
    if job is None:
        raise not_found(f"audit {job_id}")
    return job


def list_jobs(
    states: list[JobState], limit: int, cursor: str | None, caller: Caller, runtime: Runtime
) -> tuple[list[Job], str | None]:
    before = None if cursor is None else _decode_cursor(cursor)
    jobs = runtime.store.jobs.list_jobs(caller.tenant, states, limit + 1, before)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return jobs, _encode_cursor(jobs[-1].seq) if more else None


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, seq = text.split(":", 1)
        if prefix == "seq" and 0 < int(seq) < 2**62:
            return int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise Problem(problems.INVALID_CURSOR, "the cursor is not one this API returned; start again without it")


def cancel_job(job_id: str, caller: Caller, runtime: Runtime) -> Job:
    try:
        job = runtime.store.jobs.request_cancel(caller.tenant, job_id)
    except WrongState as error:
        raise Problem(
            problems.JOB_FINISHED,
            f"audit {job_id} is {error.job.state}; only queued or running audits can be cancelled",
        ) from None
    if job is None:
        raise not_found(f"audit {job_id}")
    return job


def delete_job(job_id: str, caller: Caller, runtime: Runtime) -> None:
    """Forget a finished job and remove its results."""
    try:
        job = runtime.store.jobs.delete_finished_job(job_id, caller.tenant)
    except WrongState as error:
        raise Problem(
            problems.JOB_ACTIVE,
            f"audit {job_id} is {error.job.state}; cancel it, and delete it once it has stopped",
        ) from None
    if job is None:
        raise not_found(f"audit {job_id}")
    runtime.storage.remove_results(job_id)


def result_file(job_id: str, name: str, caller: Caller, runtime: Runtime) -> tuple[Job, StoredObject]:
    """A succeeded job's result file; 409 while the job has not succeeded."""
    job = _succeeded_job(job_id, caller, runtime)
    stored = runtime.storage.open_result(job_id, job.attempts, name)
    if stored is None:  # results published before the service wrote this file
        raise Problem(problems.RESULT_FILE_MISSING, f"audit {job_id} has no {name}")
    return job, stored


def result_url(job_id: str, name: str, caller: Caller, runtime: Runtime) -> tuple[Job, str | None]:
    """A signed object-store URL of a succeeded job's result file, where the store signs and the settings
    allow it; ``None`` otherwise (the API sends the bytes)."""
    job = _succeeded_job(job_id, caller, runtime)
    expires_s = runtime.settings.signed_download_s
    url = runtime.storage.result_url(job_id, job.attempts, name, expires_s) if expires_s else None
    return job, url


def _succeeded_job(job_id: str, caller: Caller, runtime: Runtime) -> Job:
    job = get_job(job_id, caller, runtime)
    if job.state is not JobState.succeeded or job.result is None:
        if job.state in TERMINAL_STATES:
            raise Problem(problems.RESULTS_NOT_AVAILABLE, f"audit {job_id} is {job.state}; it has no results")
        raise Problem(
            problems.RESULTS_NOT_AVAILABLE,
            f"audit {job_id} is {job.state}; poll it until it has succeeded",
            {"Retry-After": str(runtime.settings.retry_after_s)},
        )
    return job
