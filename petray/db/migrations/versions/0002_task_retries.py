"""task retry bookkeeping and notes (issue 8)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.add_column(
            sa.Column("retry_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("retrying_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("task") as batch:
        for column in (
            "notes",
            "last_error",
            "next_attempt_at",
            "retrying_since",
            "retry_attempts",
        ):
            batch.drop_column(column)
