"""Storage schema of the job store. API schemas live in ``service.api.schemas``; these are rows."""

from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class ArtifactRow(Base):
    """An uploaded file; the blob is stored once per sha256, a row per kind it was uploaded as."""

    __tablename__ = "artifacts"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)  # who uploaded it: only they see it
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    format: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON: what validation found
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # list order, cursor
    id: Mapped[str] = mapped_column(String(32), unique=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    queue: Mapped[str] = mapped_column(String(32))
    request: Mapped[str] = mapped_column(Text)  # JSON of the accepted request
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    attempt_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # the running attempt's lease
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # last handed to the broker
    version: Mapped[int] = mapped_column(Integer, default=1)  # bumped on every change: the ETag
    progress_phase: Mapped[str | None] = mapped_column(String(200))
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)  # JSON problem details
    report_sha256: Mapped[str | None] = mapped_column(String(64))
    report_size: Mapped[int | None] = mapped_column(BigInteger)
    archive_sha256: Mapped[str | None] = mapped_column(String(64))
    archive_size: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    running_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    succeeded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    callback_url: Mapped[str | None] = mapped_column(Text)  # called when the job ends (service.api.webhooks)
    callback_state: Mapped[str | None] = mapped_column(String(16), index=True)
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    callback_next_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # not sent before
    callback_error: Mapped[str | None] = mapped_column(String(300))


class ApiKeyRow(Base):
    """An API key: the secret is kept only as its sha256 (keys are long random tokens, so a fast hash is
    enough; docs/decisions/0013)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the key, shown in lists
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated: read, submit, admin
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookSecretRow(Base):
    """The secret a tenant's completion callbacks are signed with (Standard Webhooks' ``whsec_...``)."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class UnitRow(Base):
    """A unit of a job attempt's audit plan that any worker may run (``workers.worker.fan_out``); rows
    live while their job runs."""

    __tablename__ = "audit_units"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # pending, running, done
    holder: Mapped[str | None] = mapped_column(String(100))  # who runs it: role, process, token
    claims: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # the holder's lease
