"""The API's resources. Rows live in ``workers.store``; the report schema in ``workers.engine.report``."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.problems import ProblemDetail
from workers.requests import ArtifactKind, AuditRequest, WorkQueue
from workers.store.jobs import Artifact, Job, JobState
from workers.store.keys import ApiKey, Scope


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


class JobLinks(BaseModel):
    self: str
    cancel: str
    report: str
    archive: str


class JobOut(BaseModel):
    id: str
    state: JobState
    queue: WorkQueue
    attempts: int = Field(description="Attempts started so far (a job whose worker was lost runs again)")
    timestamps: dict[JobState, datetime] = Field(description="When the job entered each state it has been in")
    progress: ProgressOut
    error: ProblemDetail | None = None
    result: ResultOut | None = None
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
            request=AuditRequest.model_validate(job.request),
            created_at=job.created_at,
            updated_at=job.updated_at,
            links=JobLinks(
                self=base, cancel=f"{base}/cancel", report=f"{base}/report", archive=f"{base}/archive"
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
