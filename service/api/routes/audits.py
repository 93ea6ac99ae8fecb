"""Audit jobs: submit, poll, list, cancel, delete, download."""

import base64
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse

from service.api import audits
from service.api.auth import Caller, Reader, Submitter
from service.api.job_views import JobView
from service.api.openapi import response_headers
from service.api.problems import Problem
from service.api.routes import AUTHENTICATED, problem_responses
from service.api.runtime import Runtime, RuntimeDep
from service.api.schemas import JobOut, JobPage
from workers.core import problems
from workers.core.report import ARCHIVE_FILE, HTML_FILE, REPORT_FILE, AuditReport
from workers.core.requests import AuditRequest
from workers.core.storage import file_sha256
from workers.core.store.states import TERMINAL_STATES, Job, JobState

router = APIRouter(prefix="/v1/audits", tags=["audits"])

JobId = Annotated[str, Path(max_length=64, description="The audit's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Printable ASCII without spaces; a retry with the same key and body returns the same job",
    ),
]


def _require_json(content_type: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    """A dependency, so a form or text body is refused before the body is validated as a request."""
    if content_type is None or not content_type.lower().startswith("application/json"):
        raise Problem(problems.UNSUPPORTED_MEDIA_TYPE, "send the audit request as JSON (application/json)")


# what _job_headers sends, as the OpenAPI document declares it
_JOB_HEADERS = {"headers": response_headers("ETag", "Location", optional=("Retry-After",))}
_SUBMIT_OPTIONAL_HEADERS = ("Retry-After", "Idempotent-Replayed")


def _job_headers(job: Job | JobView, runtime: Runtime) -> dict[str, str]:
    headers = {"ETag": f'"{job.id}.{job.version}"', "Location": f"/v1/audits/{job.id}"}
    if job.state not in TERMINAL_STATES:
        headers["Retry-After"] = str(runtime.settings.retry_after_s)
    return headers


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={202: {"headers": response_headers("ETag", "Location", optional=_SUBMIT_OPTIONAL_HEADERS)}}
    | problem_responses(
        *AUTHENTICATED,
        problems.MALFORMED_BODY,
        problems.UNKNOWN_ARTIFACT,
        problems.CALLBACK_URL_REFUSED,
        problems.SETTINGS_MISMATCH,
        problems.IDEMPOTENCY_KEY_REUSED,
        problems.BODY_TOO_LARGE,
        problems.UNSUPPORTED_MEDIA_TYPE,
        problems.TOO_MANY_ACTIVE_JOBS,
        problems.WORKERS_UNREACHABLE,
    ),
    dependencies=[Depends(_require_json)],
    summary="Submit an audit",
    description="Answers at once with the queued job; poll its Location. With an Idempotency-Key, a retry "
    "of the same request returns the same job, and the same key with another body is refused (422); a job "
    "that a passing fault failed (/problems/audit-interrupted) is queued again. A tenant with as many "
    "queued and running audits as it may gets 429 with Retry-After.",
)
def submit_audit(
    request: Annotated[AuditRequest, Body()],
    response: Response,
    runtime: RuntimeDep,
    caller: Submitter,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    job, created = audits.submit_audit(request, idempotency_key, caller, runtime)
    response.headers.update(_job_headers(job, runtime))
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.get(
    "",
    response_model=JobPage,
    responses=problem_responses(*AUTHENTICATED, problems.INVALID_CURSOR),
    summary="List the tenant's audits, newest first",
)
def list_audits(
    runtime: RuntimeDep,
    caller: Reader,
    state: Annotated[list[JobState], Query(description="Only audits in these states")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=64, description="next_cursor of the previous page")
    ] = None,
) -> JobPage:
    jobs, next_cursor = audits.list_jobs(state, limit, cursor, caller, runtime)
    return JobPage(items=[JobOut.of(job) for job in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={
        200: _JOB_HEADERS,
        304: {"description": "Not modified since the ETag in If-None-Match"} | _JOB_HEADERS,
    }
    | problem_responses(*AUTHENTICATED, problems.NOT_FOUND),
    summary="Poll an audit",
    description="State, progress and a timestamp per state. With If-None-Match holding the last ETag, an "
    "unchanged job answers 304.",
)
async def get_audit(
    job_id: JobId,
    runtime: RuntimeDep,
    caller: Reader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    view = await audits.job_view(job_id, caller, runtime)  # the current version, rendered once (job_views)
    headers = _job_headers(view, runtime)
    if if_none_match is not None and headers["ETag"] in _etags(if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(view.body, media_type="application/json", headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    responses={202: _JOB_HEADERS}
    | problem_responses(*AUTHENTICATED, problems.NOT_FOUND, problems.JOB_FINISHED),
    summary="Cancel an audit",
    description="A queued audit is cancelled at once; a running one becomes 'cancelling' and stops at the "
    "worker's next stage boundary.",
)
def cancel_audit(job_id: JobId, response: Response, runtime: RuntimeDep, caller: Submitter) -> JobOut:
    job = audits.cancel_job(job_id, caller, runtime)
    response.headers.update(_job_headers(job, runtime))
    return JobOut.of(job)


@router.delete(
    "/{job_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(*AUTHENTICATED, problems.NOT_FOUND, problems.JOB_ACTIVE),
    summary="Delete a finished audit and its results",
    description="Removes the job, its report, HTML report and archive. Queued or running audits answer 409: "
    "cancel them first. Finished audits are also deleted on their own after the retention period.",
)
def delete_audit(job_id: JobId, runtime: RuntimeDep, caller: Submitter) -> Response:
    audits.delete_job(job_id, caller, runtime)
    return Response(status_code=204)


def _result_response(job_id: str, name: str, media_type: str, caller: Caller, runtime: Runtime) -> Response:
    """The file itself, or (report and archive, from an object store that signs) a redirect to a signed URL
    of it; either way with the file's sha256 in ``X-Checksum-SHA256`` and ``Repr-Digest``."""
    filename = f"audit-{job_id}-{name}"
    if name != HTML_FILE:  # a page opens in the browser from the API's own origin
        job, url = audits.result_url(job_id, name, caller, runtime)
        if url is not None:
            headers = _digest_headers(_recorded_digest(job, name))
            return RedirectResponse(url, status_code=307, headers=headers)
    job, stored = audits.result_file(job_id, name, caller, runtime)
    disposition = "inline" if media_type == "text/html" else "attachment"
    if stored.path is not None:
        digest = _recorded_digest(job, name) or file_sha256(stored.path)
        return FileResponse(
            stored.path,
            media_type=media_type,
            headers=_digest_headers(digest),
            filename=filename,
            content_disposition_type=disposition,
        )
    assert stored.chunks is not None
    headers = {"Content-Disposition": f'{disposition}; filename="{filename}"'}
    digest = _recorded_digest(job, name)
    if digest is None:  # the HTML report: small, read whole to name its digest
        content = b"".join(stored.chunks)
        headers |= _digest_headers(hashlib.sha256(content).hexdigest())
        return Response(content, media_type=media_type, headers=headers)
    headers |= _digest_headers(digest) | {"Content-Length": str(stored.size)}
    return StreamingResponse(stored.chunks, media_type=media_type, headers=headers)


def _recorded_digest(job: Job, name: str) -> str | None:
    assert job.result is not None
    return {REPORT_FILE: job.result.report_sha256, ARCHIVE_FILE: job.result.archive_sha256}.get(name)


def _digest_headers(digest: str | None) -> dict[str, str]:
    if digest is None:
        return {}
    return {
        "ETag": f'"{digest}"',
        "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:",
        "X-Checksum-SHA256": digest,
    }


_DIGEST_HEADERS = ("ETag", "X-Checksum-SHA256", "Repr-Digest")
_REDIRECT = {
    307: {
        "description": "Where the object store signs URLs: the file is at the signed URL in Location",
        "headers": response_headers("Location", *_DIGEST_HEADERS),
    }
}


def _add_result_route(
    path: str, file: str, media_type: str, name: str, summary: str, ok: dict[str, Any]
) -> None:
    """``ok``: the 200 response's description and schema (a ``model``, or its ``content``)."""
    headers = response_headers(*_DIGEST_HEADERS, "Content-Length", "Content-Disposition")
    redirects = file != HTML_FILE  # as _result_response does

    @router.get(
        f"/{{job_id}}/{path}",
        response_class=FileResponse,
        responses={200: ok | {"headers": headers}}
        | (_REDIRECT if redirects else {})
        | problem_responses(
            *AUTHENTICATED, problems.NOT_FOUND, problems.RESULT_FILE_MISSING, problems.RESULTS_NOT_AVAILABLE
        ),
        summary=summary,
        name=name,
    )
    def download(job_id: JobId, runtime: RuntimeDep, caller: Reader) -> Response:
        return _result_response(job_id, file, media_type, caller, runtime)


_add_result_route(
    "report",
    REPORT_FILE,
    "application/json",
    "get_report",
    "Download the JSON report of a succeeded audit",
    {"model": AuditReport, "description": "The report (openapi/report.schema.json)"},
)
_add_result_route(
    "archive",
    ARCHIVE_FILE,
    "application/zip",
    "get_archive",
    "Download the map archive of a succeeded audit",
    {
        "description": "Every map, the manifest, the report, the figures and the HTML report, as a zip",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    },
)
_add_result_route(
    "report.html",
    HTML_FILE,
    "text/html",
    "get_report_html",
    "Download the HTML report of a succeeded audit",
    {
        "description": "Verdicts, figures, settings and provenance in one self-contained page (inline)",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
)
