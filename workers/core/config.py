"""Runtime settings shared by the HTTP service and the workers, from ``SALIENCY_*`` environment variables.

Without ``SALIENCY_BROKER_URL`` the service runs embedded: jobs run on a thread of the API process. Without
``SALIENCY_DATABASE_URL`` the job store is a SQLite file in the data directory.
"""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.core.audit_settings import MAX_PROBE_SET_PIXELS
from workers.core.logs import LogFormat


class AuthMode(StrEnum):
    keys = "keys"  # every request carries an API key; its tenant owns what it touches
    local = "local"  # requests without a key act as the one local tenant (loopback only)


LOCAL_TENANT = "local"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SALIENCY_", extra="ignore")

    data_dir: Path = Field(Path("saliency-data"), description="Uploaded artifacts, results, SQLite store.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the job store; default a SQLite file in data_dir."
    )
    broker_url: str | None = Field(None, description="Celery broker (redis://...); none = embedded worker.")
    max_upload_bytes: Annotated[int, Field(ge=1)] = 512 * 1024**2
    max_probe_images: Annotated[int, Field(ge=2, le=10_000)] = Field(
        1000, description="Most images a probe set may hold (the settings' max_images cannot exceed it)."
    )
    max_attempts: Annotated[int, Field(ge=1)] = Field(
        3, description="Attempts at one job before it is failed (a job whose worker dies is requeued)."
    )
    lease_s: Annotated[float, Field(gt=0)] = Field(
        20, description="A running job whose worker has not renewed its lease for this long is presumed lost."
    )
    sweep_interval_s: Annotated[float, Field(gt=0)] = Field(
        5, description="How often the API looks for lost attempts and jobs never handed to a worker."
    )
    redispatch_after_s: Annotated[float, Field(gt=0)] = Field(
        60,
        description="A queued job handed to the broker this long ago and not started is handed over again "
        "once its work queue holds no message (its own was lost, or dropped by a worker during an outage).",
    )
    store_retry_s: Annotated[float, Field(gt=0, le=600)] = Field(
        2,
        description="A worker that cannot reach the job store, or has too little disk, tries the job again "
        "after this pause, doubled (with jitter) at each failure up to a minute.",
    )
    store_retries: Annotated[int, Field(ge=0, le=1000)] = Field(
        10, description="Tries of a worker at one delivery before it leaves the job to the sweeper."
    )
    min_free_disk_mib: Annotated[int, Field(ge=0)] = Field(
        512,
        description="Below this much free space in data_dir, /readyz says storage is degraded, uploads "
        "answer 507 and workers take no new audit.",
    )
    soft_time_limit_s: Annotated[int, Field(ge=1)] = 4 * 3600
    hard_time_limit_s: Annotated[int, Field(ge=1)] = 4 * 3600 + 300
    retry_after_s: Annotated[int, Field(ge=1)] = Field(2, description="Poll interval suggested to clients.")
    auth: AuthMode | None = Field(
        None,
        description="'keys' (API keys required) or 'local' (requests without a key are the local tenant). "
        "Default: 'local' when `saliency-audit serve` binds a loopback address, 'keys' otherwise.",
    )
    max_request_bytes: Annotated[int, Field(ge=1024)] = Field(
        64 * 1024, description="Largest JSON request body (uploads have max_upload_bytes)."
    )
    max_probe_set_pixels: Annotated[int, Field(ge=1, le=MAX_PROBE_SET_PIXELS)] = Field(
        MAX_PROBE_SET_PIXELS,
        description="Pixel values (height x width x channels, summed over images) one image set may hold; "
        "at most what the engine reads.",
    )
    max_active_jobs: Annotated[int, Field(ge=1)] = Field(
        4, description="Queued and running audits one tenant may have at a time; more answer 429."
    )
    max_stored_bytes: Annotated[int, Field(ge=1)] = Field(
        20 * 1024**3, description="Uploads and results one tenant may keep; more answer 413."
    )
    retention_s: Annotated[float, Field(gt=0)] = Field(
        30 * 86400, description="Finished audits and their results are deleted this long after they end."
    )
    abandoned_upload_s: Annotated[float, Field(gt=0)] = Field(
        3600, description="Partial uploads and work folders untouched this long are removed."
    )
    storage_url: str | None = Field(
        None,
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        description="s3://bucket[/prefix]: stored artifacts and results in S3-compatible object storage, "
        "shared by API processes and workers on several machines (credentials from the standard AWS_* "
        "variables). Default: the data_dir folder, for one machine.",
    )
    s3_endpoint: str | None = Field(
        None, description="Endpoint of an S3-compatible store other than AWS (MinIO, Ceph, R2...)."
    )
    s3_region: str | None = Field(None, description="Region of the bucket (AWS_REGION otherwise).")
    signed_download_s: Annotated[int, Field(ge=0, le=7 * 86400)] = Field(
        300,
        description="Result downloads redirect to a signed object-store URL valid this long, where the "
        "store can sign; 0: the API sends the bytes itself.",
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Host names and IP networks callbacks may reach although private or loopback, as JSON "
        '(\'["hooks.internal", "10.20.0.0/16"]\'); public addresses need no entry.',
    )
    webhook_attempts: Annotated[int, Field(ge=1, le=30)] = Field(
        8, description="Tries at a completion callback before it is given up on."
    )
    webhook_retry_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30, description="Pause before the second try at a callback; it doubles after each failure (to 1 h)."
    )
    log_format: LogFormat = Field(
        LogFormat.text, description="text, or json: one JSON object per line, with request and job ids."
    )
    fan_out: bool = Field(
        True,
        description="Share an audit's units with the other Celery workers listening on its queue (one "
        "audit over many workers); off: each audit runs on one worker.",
    )
    audit_memory_limit_mib: Annotated[int, Field(ge=0)] = Field(
        8192,
        description="Address space an audit's process may use (embedded worker child, Celery task); 0: "
        "no limit (GPU hosts, where the CUDA driver reserves large address ranges: limit the container).",
    )

    @field_validator("audit_memory_limit_mib")
    @classmethod
    def _enough_to_start(cls, value: int) -> int:
        if 0 < value < 1024:
            raise ValueError("an audit process needs at least 1024 MiB to import torch (or 0: no limit)")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Absolute, so links into it made in work folders resolve wherever they are read from."""
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"
