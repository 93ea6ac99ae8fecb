"""Units of an audit plan that several workers share.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from workers.core.store.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_units",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("attempt", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(100), nullable=True),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("heartbeat_at", UtcDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit_units")
