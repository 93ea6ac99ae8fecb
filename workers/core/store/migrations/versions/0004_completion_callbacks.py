"""Completion callbacks: a job may name a URL called when it ends, signed with its tenant's webhook secret.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from workers.core.store.tables import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("callback_error", "callback_next_at", "callback_attempts", "callback_state", "callback_url")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("callback_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("callback_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("callback_next_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("callback_error", sa.String(300), nullable=True))
        batch.create_index("ix_jobs_callback_state", ["callback_state"])
    op.create_table(
        "webhook_secrets",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_callback_state")
        for name in _COLUMNS:
            batch.drop_column(name)
