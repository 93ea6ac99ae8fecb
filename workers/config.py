"""Runtime settings shared by the HTTP service and the workers, from ``SALIENCY_*`` environment variables.

Without ``SALIENCY_BROKER_URL`` the service runs embedded: jobs run on a thread of the API process. Without
``SALIENCY_DATABASE_URL`` the job store is a SQLite file in the data directory.
"""

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        60, description="A running job whose worker has not renewed its lease for this long is presumed lost."
    )
    sweep_interval_s: Annotated[float, Field(gt=0)] = Field(
        15, description="How often the API looks for lost attempts and jobs never handed to a worker."
    )
    soft_time_limit_s: Annotated[int, Field(ge=1)] = 4 * 3600
    hard_time_limit_s: Annotated[int, Field(ge=1)] = 4 * 3600 + 300
    retry_after_s: Annotated[int, Field(ge=1)] = Field(2, description="Poll interval suggested to clients.")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        """Absolute, so links into it made in work folders resolve wherever they are read from."""
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"
