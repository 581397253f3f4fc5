"""Issue 15: STOW-RS destinations, the quantitative check, sites that require a weight

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A destination reached over DICOMweb STOW-RS (PS3.18 10.5) instead of C-STORE: its
    # service URL and how to authenticate (a bearer token or "user:password" for Basic).
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("stow_url", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("stow_token", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("stow_basic", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("task_destination") as batch:
        batch.add_column(sa.Column("stow_url", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("site_config") as batch:
        # Off: a series without PatientWeight is processed and its SUV is not computed.
        batch.add_column(
            sa.Column(
                "require_patient_weight", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        # The quantitative check's alarm (percent change against the received series);
        # null turns that check off.
        batch.add_column(sa.Column("quant_max_activity_change_pct", sa.Float(), nullable=True))
        batch.add_column(sa.Column("quant_max_suvmax_change_pct", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("site_config") as batch:
        batch.drop_column("quant_max_suvmax_change_pct")
        batch.drop_column("quant_max_activity_change_pct")
        batch.drop_column("require_patient_weight")
    with op.batch_alter_table("task_destination") as batch:
        batch.drop_column("stow_url")
    with op.batch_alter_table("device") as batch:
        batch.drop_column("stow_basic")
        batch.drop_column("stow_token")
        batch.drop_column("stow_url")
