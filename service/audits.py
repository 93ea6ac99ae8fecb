"""Job service functions: submit (idempotent), read, list, cancel, and locate results."""

import base64
import binascii
import hashlib
import json
import tempfile
from pathlib import Path

from service.job_views import JobView
from service.problems import Problem, not_found
from service.runtime import Runtime
from workers.dispatch import DispatchError
from workers.engine.errors import AuditInputError
from workers.engine.probes import load_probes
from workers.requests import ArtifactKind, AuditRequest
from workers.store.jobs import TERMINAL_STATES, Job, JobState, WrongState
from workers.sweeper import dispatch_job

_UPLOAD_ROUTES = {
    ArtifactKind.model: "/v1/models",
    ArtifactKind.probes: "/v1/probe-sets",
    ArtifactKind.training_data: "/v1/training-sets",
}


def request_hash(request: AuditRequest) -> str:
    """Of the request with every default filled in: omitting a default is the same request as stating it."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def submit_audit(request: AuditRequest, idempotency_key: str | None, runtime: Runtime) -> tuple[Job, bool]:
    """The queued job, and whether this call created it (``False``: an idempotent replay)."""
    digest = request_hash(request)
    if idempotency_key is not None:
        earlier = runtime.store.get_job_by_key(idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest), False
    _check_inputs(request, runtime)
    job, created = runtime.store.create_job(
        request.model_dump(mode="json"), digest, idempotency_key, request.queue
    )
    if not created:
        return _replay(job, digest), False
    try:
        dispatch_job(runtime.store, runtime.dispatcher, job.id, request.queue, job.attempts)
    except DispatchError as error:
        runtime.store.delete_job(job.id)
        raise Problem(
            503, "Workers unreachable", f"{error}; nothing was queued, retry later", {"Retry-After": "10"}
        ) from None
    return job, True


def _replay(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise Problem(
            422,
            "Idempotency key reused",
            f"this Idempotency-Key was used for job {job.id} with a different request body; use a new key "
            "for a new request",
        )
    return job


def _check_inputs(request: AuditRequest, runtime: Runtime) -> None:
    """Every artifact uploaded as the right kind, and the probes readable with the requested preprocessing."""
    stored = {}
    for role, (sha256, kind) in request.artifacts().items():
        artifact = runtime.store.get_artifact(sha256, kind)
        if artifact is None:
            raise Problem(
                422,
                "Unknown artifact",
                f"{role}: no {kind.value} artifact has sha256 {sha256}; upload it to "
                f"{_UPLOAD_ROUTES[kind]} first",
            )
        stored[role] = artifact
    if request.settings.max_images > runtime.settings.max_probe_images:
        raise Problem(
            422, "Invalid settings", f"settings.max_images may be at most {runtime.settings.max_probe_images}"
        )
    with tempfile.TemporaryDirectory() as folder:
        probes = runtime.storage.link_artifact(stored["probes"], Path(folder), "probes")
        try:
            load_probes(probes, request.settings.preprocessing, None, request.settings.max_images)
        except AuditInputError as error:
            raise Problem(422, "Probes do not fit the settings", str(error)) from None


def get_job(job_id: str, runtime: Runtime) -> Job:
    job = runtime.store.get_job(job_id)
    if job is None:
        raise not_found(f"audit {job_id}")
    return job


async def job_view(job_id: str, runtime: Runtime) -> JobView:
    view = await runtime.job_views.get(job_id)
    if view is None:
        raise not_found(f"audit {job_id}")
    return view


def list_jobs(
    states: list[JobState], limit: int, cursor: str | None, runtime: Runtime
) -> tuple[list[Job], str | None]:
    jobs = runtime.store.list_jobs(states, limit + 1, None if cursor is None else _decode_cursor(cursor))
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
    raise Problem(400, "Invalid cursor", "the cursor is not one this API returned; start again without it")


def cancel_job(job_id: str, runtime: Runtime) -> Job:
    try:
        job = runtime.store.request_cancel(job_id)
    except WrongState as error:
        raise Problem(
            409,
            "Job already finished",
            f"audit {job_id} is {error.job.state}; only queued or running audits can be cancelled",
        ) from None
    if job is None:
        raise not_found(f"audit {job_id}")
    return job


def result_file(job_id: str, name: str, runtime: Runtime) -> tuple[Job, Path]:
    """A succeeded job's result file; 409 while the job has not succeeded."""
    job = get_job(job_id, runtime)
    if job.state is not JobState.succeeded or job.result is None:
        if job.state in TERMINAL_STATES:
            raise Problem(409, "Results not available", f"audit {job_id} is {job.state}; it has no results")
        raise Problem(
            409,
            "Results not available",
            f"audit {job_id} is {job.state}; poll it until it has succeeded",
            {"Retry-After": str(runtime.settings.retry_after_s)},
        )
    path = runtime.storage.results_dir(job_id, job.attempts) / name
    if not path.is_file():  # results published before the service wrote this file
        raise Problem(404, "Result not available", f"audit {job_id} has no {name}")
    return job, path
