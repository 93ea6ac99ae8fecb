"""The API's resources. Rows live in ``workers.core.store``; the report schema in ``workers.core.report``."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.api.problems import ProblemDetail
from workers.core.requests import ArtifactKind, AuditRequest, WorkQueue
from workers.core.store.artifacts import Artifact
from workers.core.store.keys import ApiKey, Scope
from workers.core.store.states import Callback, CallbackState, Job, JobState


class ArtifactOut(BaseModel):
    sha256: str
    kind: ArtifactKind
    format: str = Field(description="onnx, torchscript or torch_export; npy, npz or zip for image sets")
    size_bytes: int
    details: dict[str, Any] = Field(description="What validation found (inputs, image count, labels)")
    created_at: datetime
    href: str

    @classmethod
    def of(cls, artifact: Artifact, href: str) -> "ArtifactOut":
        return cls(
            sha256=artifact.sha256,
            kind=ArtifactKind(artifact.kind),
            format=artifact.format,
            size_bytes=artifact.size_bytes,
            details=artifact.details,
            created_at=artifact.created_at,
            href=href,
        )


class ProgressOut(BaseModel):
    phase: str | None = Field(description="What the worker is doing, e.g. 'gradient: cascading'")
    done: int
    total: int


class ResultOut(BaseModel):
    report_sha256: str
    report_size: int
    archive_sha256: str
    archive_size: int


class CallbackOut(BaseModel):
    url: str
    state: CallbackState = Field(description="pending until delivered (a 2xx answer) or given up on")
    attempts: int = Field(description="Tries so far")
    last_error: str | None = Field(description="Why the last try failed")
    next_attempt_at: datetime | None = Field(description="Not tried again before this")

    @classmethod
    def of(cls, callback: Callback) -> "CallbackOut":
        return cls(
            url=callback.url,
            state=callback.state,
            attempts=callback.attempts,
            last_error=callback.error,
            next_attempt_at=callback.next_at if callback.state is CallbackState.pending else None,
        )


class WebhookSecretOut(BaseModel):
    secret: str = Field(description="Standard Webhooks secret (whsec_...) to verify the tenant's callbacks")


class JobLinks(BaseModel):
    """Paths of the job's operations; the results answer 409 until the audit has succeeded."""

    self: str
    cancel: str
    report: str = Field(description="The JSON report")
    archive: str = Field(description="The map archive (zip)")
    report_html: str = Field(description="The HTML report")


class JobOut(BaseModel):
    id: str
    state: JobState
    queue: WorkQueue
    attempts: int = Field(description="Attempts started so far (a job whose worker was lost runs again)")
    timestamps: dict[JobState, datetime] = Field(description="When the job entered each state it has been in")
    progress: ProgressOut
    error: ProblemDetail | None = None
    result: ResultOut | None = None
    callback: CallbackOut | None = Field(None, description="The completion callback, where one was asked for")
    request: AuditRequest
    created_at: datetime
    updated_at: datetime
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> "JobOut":
        base = f"/v1/audits/{job.id}"
        return cls(
            id=job.id,
            state=job.state,
            queue=WorkQueue(job.queue),
            attempts=job.attempts,
            timestamps=job.timestamps,
            progress=ProgressOut(phase=job.progress_phase, done=job.progress_done, total=job.progress_total),
            error=None if job.error is None else ProblemDetail.model_validate(job.error),
            result=None if job.result is None else ResultOut(**vars(job.result)),
            callback=None if job.callback is None else CallbackOut.of(job.callback),
            request=AuditRequest.model_validate(job.request),
            created_at=job.created_at,
            updated_at=job.updated_at,
            links=JobLinks(
                self=base,
                cancel=f"{base}/cancel",
                report=f"{base}/report",
                archive=f"{base}/archive",
                report_html=f"{base}/report.html",
            ),
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="What the key is for, e.g. 'ci pipeline'")
    scopes: list[Scope] = Field(min_length=1, max_length=3, description="read, submit and/or admin")


class KeyOut(BaseModel):
    id: str
    tenant: str
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> "KeyOut":
        return cls(
            id=key.id,
            tenant=key.tenant,
            name=key.name,
            scopes=sorted(key.scopes),
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class CreatedKeyOut(KeyOut):
    token: str = Field(description="The API key itself: shown this once, stored only as a hash")
