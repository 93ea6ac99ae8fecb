"""Every kind of error a client can meet, with a stable problem ``type`` (RFC 9457), and the scrubbing that
keeps server paths out of what a client reads.

One catalog for the API's answers and for the errors recorded on failed jobs (the workers write those),
so both speak the same types. The ``type`` is a relative URI the API serves (``GET /problems/<slug>``).
Torch-free.
"""

import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBLEM_PATH = "/problems/"


@dataclass(frozen=True)
class ProblemKind:
    slug: str
    status: int
    title: str
    description: str
    example: str  # a detail as a client would see it

    @property
    def type(self) -> str:
        return PROBLEM_PATH + self.slug

    def body(self, detail: str) -> dict[str, Any]:
        """As a job's stored error (the API adds ``instance`` to its own answers)."""
        return {"type": self.type, "title": self.title, "status": self.status, "detail": detail}


CATALOG: dict[str, ProblemKind] = {}


def _kind(slug: str, status: int, title: str, description: str, example: str) -> ProblemKind:
    kind = ProblemKind(slug, status, title, description, example)
    CATALOG[slug] = kind
    return kind


INVALID_REQUEST = _kind(
    "invalid-request",
    422,
    "Invalid request",
    "A field of the request is missing, malformed or out of bounds.",
    "settings.seed: Input should be greater than or equal to 0",
)
MALFORMED_BODY = _kind(
    "malformed-body",
    400,
    "Malformed body",
    "The request body is not valid JSON (or not UTF-8).",
    "There was an error parsing the body",
)
INVALID_ARTIFACT = _kind(
    "invalid-artifact",
    422,
    "Invalid artifact",
    "An uploaded file was refused: not a supported model or image "
    "set, damaged, unsafe (pickles, external data) or above a limit.",
    "model.onnx is a Python pickle (e.g. torch.save of a model or state dict)...",
)
EMPTY_UPLOAD = _kind(
    "empty-upload",
    422,
    "Empty upload",
    "The request body of an upload is empty.",
    "the request body is empty; send the file's bytes as the body",
)
UNKNOWN_ARTIFACT = _kind(
    "unknown-artifact",
    422,
    "Unknown artifact",
    "A submitted audit names an artifact this tenant has not uploaded as that kind.",
    "probes: no probes artifact has sha256 ...; upload it to /v1/probe-sets first",
)
SETTINGS_MISMATCH = _kind(
    "settings-mismatch",
    422,
    "Settings do not fit the inputs",
    "The audit's settings cannot apply to the uploaded files (e.g. a resize for arrays, too many images).",
    "preprocessing size applies only to images; arrays are never resized",
)
IDEMPOTENCY_KEY_REUSED = _kind(
    "idempotency-key-reused",
    422,
    "Idempotency key reused",
    "The Idempotency-Key was used before with another request body.",
    "this Idempotency-Key was used for job ... with a different request body",
)
INVALID_CURSOR = _kind(
    "invalid-cursor",
    400,
    "Invalid cursor",
    "The list cursor is not one this API returned.",
    "the cursor is not one this API returned; start again without it",
)
UNAUTHORIZED = _kind(
    "unauthorized",
    401,
    "Unauthorized",
    "The request has no API key, or its key is unknown or revoked.",
    "send an API key as 'Authorization: Bearer sa_...'",
)
FORBIDDEN = _kind(
    "forbidden",
    403,
    "Forbidden",
    "The API key lacks the scope the operation needs.",
    "this operation needs an API key with the 'submit' scope",
)
NOT_FOUND = _kind(
    "not-found",
    404,
    "Not found",
    "No such resource for this tenant (another tenant's ids are not found either).",
    "audit 3f2a... does not exist",
)
METHOD_NOT_ALLOWED = _kind(
    "method-not-allowed",
    405,
    "Method not allowed",
    "The path does not take this HTTP method.",
    "Method Not Allowed",
)
JOB_FINISHED = _kind(
    "job-finished",
    409,
    "Job already finished",
    "Only queued or running audits can be cancelled.",
    "audit ... is succeeded; only queued or running audits can be cancelled",
)
JOB_ACTIVE = _kind(
    "job-active",
    409,
    "Job still active",
    "Only finished audits can be deleted; cancel it first.",
    "audit ... is running; cancel it and delete it once it is cancelled",
)
RESULTS_NOT_AVAILABLE = _kind(
    "results-not-available",
    409,
    "Results not available",
    "The audit has not succeeded (yet).",
    "audit ... is running; poll it until it has succeeded",
)
RESULT_FILE_MISSING = _kind(
    "result-file-missing",
    404,
    "Result not available",
    "The audit succeeded before the service wrote this file.",
    "audit ... has no report.html",
)
UPLOAD_TOO_LARGE = _kind(
    "upload-too-large",
    413,
    "Upload too large",
    "The upload is larger than the service accepts.",
    "uploads are limited to 536870912 bytes",
)
BODY_TOO_LARGE = _kind(
    "body-too-large",
    413,
    "Request body too large",
    "A JSON request body is larger than the service accepts.",
    "request bodies are limited to 65536 bytes",
)
STORAGE_QUOTA = _kind(
    "storage-quota",
    413,
    "Storage quota exceeded",
    "The tenant's uploads and results would exceed its "
    "stored-bytes limit; delete finished audits to make room.",
    "this tenant stores 21474836000 bytes; the limit is 21474836480",
)
UNSUPPORTED_MEDIA_TYPE = _kind(
    "unsupported-media-type",
    415,
    "Unsupported media type",
    "The request body has a content type this operation does not take.",
    "send the file's raw bytes as the body, not a multipart form",
)
TOO_MANY_ACTIVE_JOBS = _kind(
    "too-many-active-jobs",
    429,
    "Too many active audits",
    "The tenant has as many queued and running audits as it may; retry after Retry-After seconds.",
    "this tenant has 4 queued or running audits",
)
CALLBACK_URL_REFUSED = _kind(
    "callback-url-refused",
    422,
    "Callback URL refused",
    "The service does not call this callback_url: it is not http(s), carries credentials, does not resolve, "
    "or resolves to a private, loopback or reserved address the operator has not allowed.",
    "callback_url's host hooks.internal is or resolves to a private, loopback or reserved address; ...",
)
WORKERS_UNREACHABLE = _kind(
    "workers-unreachable",
    503,
    "Workers unreachable",
    "The job could not be handed to a worker; nothing was queued.",
    "the broker is unreachable; nothing was queued, retry later",
)
STORAGE_UNAVAILABLE = _kind(
    "storage-unavailable",
    503,
    "Storage unavailable",
    "The object store that keeps uploads and results could not be reached; nothing was changed.",
    "the object store is unreachable for now; retry later",
)
DATABASE_UNAVAILABLE = _kind(
    "database-unavailable",
    503,
    "Database unavailable",
    "The job store cannot be reached for now; nothing was changed. Retry after Retry-After seconds, with the "
    "same Idempotency-Key for a submission.",
    "the job store is unreachable for now; retry later",
)
INSUFFICIENT_STORAGE = _kind(
    "insufficient-storage",
    507,
    "Insufficient storage",
    "The service's disk is full for now; nothing was kept. Retry after Retry-After seconds.",
    "the service's disk is full; nothing was kept, retry later",
)
INTERNAL_ERROR = _kind(
    "internal-error",
    500,
    "Internal error",
    "The service failed; the log holds the details under the request id of the X-Request-ID header.",
    "the server failed; quote request id 9b1f... when reporting it",
)
AUDIT_REFUSED = _kind(
    "audit-refused",
    422,
    "Audit refused",
    "A failed job: the engine refused the inputs (model, probes or "
    "settings); the detail says what to change.",
    "probes.npz: probes contain NaN or infinite values",
)
AUDIT_FAILED = _kind(
    "audit-failed",
    500,
    "Audit failed",
    "A failed job: the service failed while running it; the log holds the details under the job id.",
    "the audit failed inside the service (job ..., attempt 1)",
)
WORKER_LOST = _kind(
    "worker-lost",
    500,
    "Worker lost",
    "A failed job: its worker stopped (killed, out of memory, past the hard time limit) too often.",
    "the job was started 3 times and its worker was lost each time",
)
AUDIT_INTERRUPTED = _kind(
    "audit-interrupted",
    503,
    "Audit interrupted",
    "A failed job: a passing fault (a full disk, the job store or the object store unreachable) stopped "
    "every attempt. Nothing is wrong with the request: submit it again with the same Idempotency-Key and it "
    "runs again.",
    "the service's disk was full at each of 3 attempts; submit again with the same Idempotency-Key",
)
AUDIT_PROCESS_STOPPED = _kind(
    "audit-process-stopped",
    422,
    "Audit process stopped",
    "A failed job: the process running the audit "
    "was stopped by its memory or time limit, or died (often a model that needs more memory than allowed).",
    "the audit process was killed by signal 9 (the memory limit is 8192 MiB)",
)


# failed jobs that a submission with the same Idempotency-Key runs again
RETRYABLE_FAILURES = frozenset({AUDIT_INTERRUPTED.type})


def server_roots(data_dir: Path) -> tuple[str, ...]:
    """Folders whose paths must never reach a client, longest first."""
    roots = {str(data_dir), tempfile.gettempdir(), sys.prefix, str(Path.home()), str(Path.cwd())}
    roots |= {str(Path(root).resolve()) for root in list(roots)}
    return tuple(sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True))


def redact_paths(text: str, roots: Iterable[str]) -> str:
    """Replace every path under a server root by its last component (the file's own name)."""
    for root in roots:
        text = re.sub(re.escape(root.rstrip("/")) + r"(/[^\s'\":,;()\[\]]*)?", _last_part, text)
    return text


def _last_part(match: re.Match[str]) -> str:
    tail = (match.group(1) or "").rstrip("/")
    return tail.rsplit("/", 1)[-1] or "<server path>"
