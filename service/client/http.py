"""A Python client of the audit service, for pipelines and other services (httpx; no torch).

    with AuditClient("https://audits.example.com", api_key="sa_...") as client:
        job = client.audit("model.onnx", "probes.npz", AuditSettings(methods=["gradient", "gradcam"]))
        report = client.report(job.id)

Uploads skip bytes the server already has (it is asked by sha256 first). Submits carry an
Idempotency-Key, kept across the client's own retries, so a retry never queues a second audit. Answers 429,
502-504 and 507 (a service whose job store, broker or disk is out for a while), and connection failures,
are retried after the server's Retry-After (or a growing backoff) for up to ``ride_out_s`` from the first
failure of a request. Every other error raises ``ServiceError`` holding the server's problem details.
"""

import hashlib
import io
import itertools
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from service.api.schemas import ArtifactOut, JobOut, WebhookSecretOut
from workers.core.audit_settings import AuditSettings
from workers.core.report import AuditReport
from workers.core.requests import ArtifactKind, AuditRequest
from workers.core.store.states import TERMINAL_STATES

ROUTES = {
    ArtifactKind.model: "/v1/models",
    ArtifactKind.probes: "/v1/probe-sets",
    ArtifactKind.training_data: "/v1/training-sets",
}
RESULT_FILES = {"report": "report.json", "report.html": "report.html", "archive": "maps.zip"}
_RETRIED = frozenset({429, 502, 503, 504, 507})
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
Source = Path | str | bytes


class ServiceError(Exception):
    """The service refused or failed a request: ``status`` and its problem details (``problem``)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        detail = problem.get("detail") or problem.get("title") or "no detail"
        super().__init__(f"{status} {problem.get('title', 'error')}: {detail}")

    @property
    def client_error(self) -> bool:
        return 400 <= self.status < 500


class AuditClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        ride_out_s: float = 300.0,
        max_wait_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.ride_out_s, self.max_wait_s = ride_out_s, max_wait_s

    def __enter__(self) -> "AuditClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- uploads -------------------------------------------------------------------------------------------

    def upload(self, kind: ArtifactKind, source: Source) -> tuple[ArtifactOut, bool]:
        """The stored artifact, and whether its bytes had to be sent (``False``: the server had them).
        A folder of PNG/JPEG images is sent as a zip, as the service takes image sets."""
        name, data = _bytes_of(source)
        sha256 = hashlib.sha256(data).hexdigest()
        known = self._request("GET", f"{ROUTES[kind]}/{sha256}", allow={404})
        if known.status_code == 200:
            return ArtifactOut.model_validate_json(known.content), False
        sent = self._request(
            "POST",
            ROUTES[kind],
            params={"filename": name},
            content=lambda: data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return ArtifactOut.model_validate_json(sent.content), True

    # --- jobs ----------------------------------------------------------------------------------------------

    def submit(self, request: AuditRequest, idempotency_key: str | None = None) -> JobOut:
        """Queue an audit; the key (a new one unless given) is reused by every retry of this call."""
        key = idempotency_key or uuid.uuid4().hex
        response = self._request(
            "POST",
            "/v1/audits",
            content=lambda: request.model_dump_json(exclude_defaults=True).encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        return JobOut.model_validate_json(response.content)

    def job(self, job_id: str) -> JobOut:
        return JobOut.model_validate_json(self._request("GET", f"/v1/audits/{job_id}").content)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Poll until the job has finished (succeeded, failed or cancelled), at the pace the server's
        Retry-After asks, growing to ``max_wait_s``; unchanged polls cost a 304."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        etag, job, pause = None, None, 0.5
        while True:
            response = self._request(
                "GET", f"/v1/audits/{job_id}", headers={"If-None-Match": etag} if etag else {}, allow={304}
            )
            if response.status_code == 200:
                job, etag = JobOut.model_validate_json(response.content), response.headers.get("etag")
                pause = 0.5
                if on_progress is not None:
                    on_progress(job)
                if job.state in TERMINAL_STATES:
                    return job
            else:
                pause = min(pause * 1.5, self.max_wait_s)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"audit {job_id} has not finished after {timeout_s} s")
            time.sleep(max(pause, _retry_after(response) or 0.0))

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate_json(self._request("POST", f"/v1/audits/{job_id}/cancel").content)

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/audits/{job_id}")

    def webhook_secret(self) -> str:
        """The tenant's secret for verifying completion callbacks (a Standard Webhooks ``whsec_...``)."""
        response = self._request("GET", "/v1/webhook-secret")
        return WebhookSecretOut.model_validate_json(response.content).secret

    # --- results -------------------------------------------------------------------------------------------

    def report(self, job_id: str) -> AuditReport:
        """The report as the engine's own pydantic models."""
        return AuditReport.model_validate_json(self._download(job_id, "report").getvalue())

    def download(self, job_id: str, what: str, folder: Path) -> Path:
        """``what``: report, report.html or archive; written to ``folder`` once its checksum matched."""
        path = Path(folder) / RESULT_FILES[what]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._download(job_id, what).getvalue())
        return path

    def _download(self, job_id: str, what: str) -> io.BytesIO:
        # a store that signs URLs answers with a redirect to one (httpx drops the API key on the way there)
        response = self._request("GET", f"/v1/audits/{job_id}/{what}", follow_redirects=True)
        expected = next(
            (
                hop.headers["x-checksum-sha256"]
                for hop in (response, *response.history)
                if "x-checksum-sha256" in hop.headers
            ),
            None,
        )
        if expected is not None and hashlib.sha256(response.content).hexdigest() != expected:
            raise ServiceError(502, {"title": "Damaged download", "detail": f"{what} failed its checksum"})
        return io.BytesIO(response.content)

    # --- one call ------------------------------------------------------------------------------------------

    def audit(
        self,
        model: Source,
        probes: Source,
        settings: AuditSettings | None = None,
        *,
        twins: list[Source] | None = None,
        controls: list[Source] | None = None,
        training_data: Source | None = None,
        callback_url: str | None = None,
        timeout_s: float | None = None,
        on_progress: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Upload what the server lacks, submit, and wait for the audit to finish."""

        def model_sha(source: Source) -> str:
            return self.upload(ArtifactKind.model, source)[0].sha256

        request = AuditRequest(
            model=model_sha(model),
            probes=self.upload(ArtifactKind.probes, probes)[0].sha256,
            settings=settings or AuditSettings(),
            twins=[model_sha(twin) for twin in twins or []],
            controls=[model_sha(control) for control in controls or []],
            training_data=None
            if training_data is None
            else self.upload(ArtifactKind.training_data, training_data)[0].sha256,
            callback_url=callback_url,
        )
        job = self.submit(request)
        return self.wait(job.id, timeout_s=timeout_s, on_progress=on_progress)

    # --- transport -----------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: Callable[[], bytes] | None = None,
        allow: frozenset[int] | set[int] = frozenset(),
        **options: Any,
    ) -> httpx.Response:
        """Send, retrying 429/502-504/507 and connection failures after Retry-After or a growing backoff
        while ``ride_out_s`` from the first failure allows; raise ``ServiceError`` for any other error
        status not in ``allow``."""
        deadline: float | None = None
        for attempt in itertools.count():
            response, failure = None, None
            try:
                response = self._http.request(
                    method, path, content=None if content is None else content(), **options
                )
            except httpx.TransportError as error:
                failure = error
            if response is not None and response.status_code not in _RETRIED:
                if response.is_success or response.status_code in allow:
                    return response
                raise ServiceError(response.status_code, _problem(response))
            deadline = deadline if deadline is not None else time.monotonic() + self.ride_out_s
            hint = _retry_after(response) if response is not None else None
            pause = min(hint or 2.0**attempt, self.max_wait_s)
            if time.monotonic() + pause > deadline:
                if response is None:
                    raise failure or httpx.ConnectError(f"{method} {path}: unreachable")
                raise ServiceError(response.status_code, _problem(response))
            time.sleep(pause)
        raise AssertionError("unreachable: itertools.count() does not end")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"title": response.reason_phrase, "status": response.status_code, "detail": response.text[:300]}


def _bytes_of(source: Source) -> tuple[str, bytes]:
    if isinstance(source, bytes):
        return "upload", source
    path = Path(source)
    if path.is_dir():
        return f"{path.name}.zip", _zip_images(path)
    return path.name, path.read_bytes()


def _zip_images(folder: Path) -> bytes:
    """The folder's PNG/JPEG images (class sub-folders kept) as an in-memory zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for image in sorted(folder.rglob("*")):
            if image.is_file() and image.suffix.lower() in _IMAGE_SUFFIXES:
                bundle.write(image, image.relative_to(folder).as_posix())
    return buffer.getvalue()
