"""Tenants and API keys: every job and artifact belongs to a tenant; idempotency keys are per tenant.

Rows written before this revision belong to the local tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from workers.core.store.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ARTIFACT_COLUMNS = "sha256, kind, format, size_bytes, details, created_at"
_UNIQUE_KEY = "uq_jobs_tenant_idempotency_key"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("scopes", sa.String(100), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    # the artifacts' primary key gains the tenant: a new table, filled from the old one
    op.create_table(
        "artifacts_by_tenant",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.execute(
        f"INSERT INTO artifacts_by_tenant (tenant, {_ARTIFACT_COLUMNS}) "
        f"SELECT 'local', {_ARTIFACT_COLUMNS} FROM artifacts"
    )
    op.drop_table("artifacts")
    op.rename_table("artifacts_by_tenant", "artifacts")

    postgresql = op.get_bind().dialect.name == "postgresql"
    old_unique = "jobs_idempotency_key_key" if postgresql else "uq_jobs_idempotency_key"
    naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}  # SQLite's from 0001 are unnamed: batch names them
    with op.batch_alter_table("jobs", naming_convention=naming) as batch:
        batch.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default="local"))
        batch.drop_constraint(old_unique, type_="unique")
        batch.create_unique_constraint(_UNIQUE_KEY, ["tenant", "idempotency_key"])
        batch.create_index("ix_jobs_tenant", ["tenant"])


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant")
        batch.drop_constraint(_UNIQUE_KEY, type_="unique")
        batch.drop_column("tenant")
        batch.create_unique_constraint(
            "jobs_idempotency_key_key" if postgresql else "uq_jobs_idempotency_key", ["idempotency_key"]
        )
    op.create_table(
        "artifacts_shared",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.execute(
        f"INSERT INTO artifacts_shared ({_ARTIFACT_COLUMNS}) SELECT {_ARTIFACT_COLUMNS} FROM artifacts a "
        "WHERE a.tenant = (SELECT MIN(b.tenant) FROM artifacts b "
        "WHERE b.sha256 = a.sha256 AND b.kind = a.kind)"
    )
    op.drop_table("artifacts")
    op.rename_table("artifacts_shared", "artifacts")
    op.drop_table("api_keys")
