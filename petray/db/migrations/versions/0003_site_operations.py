"""site operations: TLS per device, audit trail, retention (issue 10)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 02:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("tls", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("tls_ca", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("tls_cert", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("tls_key", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("site_config") as batch:
        batch.add_column(
            sa.Column("retention_done_days", sa.Integer(), nullable=False, server_default="7")
        )
        batch.add_column(
            sa.Column("retention_failed_days", sa.Integer(), nullable=False, server_default="30")
        )
    with op.batch_alter_table("task") as batch:
        batch.add_column(sa.Column("files_purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"], unique=False)
    op.create_index("ix_audit_event_action", "audit_event", ["action"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_event_action", table_name="audit_event")
    op.drop_index("ix_audit_event_at", table_name="audit_event")
    op.drop_table("audit_event")
    with op.batch_alter_table("task") as batch:
        batch.drop_column("files_purged_at")
    with op.batch_alter_table("site_config") as batch:
        batch.drop_column("retention_failed_days")
        batch.drop_column("retention_done_days")
    with op.batch_alter_table("device") as batch:
        for column in ("tls_key", "tls_cert", "tls_ca", "tls"):
            batch.drop_column(column)
