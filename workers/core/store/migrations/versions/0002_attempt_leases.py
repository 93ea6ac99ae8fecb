"""Attempt leases: when the running attempt began and last beat, and when the job was last dispatched.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from workers.core.store.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("attempt_started_at", "heartbeat_at", "dispatched_at")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, UtcDateTime(), nullable=True))
    # jobs running at the upgrade: their last change is their last sign of life, so the sweeper settles
    # them once a lease has passed since
    op.execute(
        "UPDATE jobs SET heartbeat_at = updated_at, attempt_started_at = running_at "
        "WHERE state IN ('running', 'cancelling')"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
