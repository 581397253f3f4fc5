"""device.match_ae_only: a source device may be matched on its AE title alone (issue 9)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # False for every existing device: the whitelist keeps checking their host.
    with op.batch_alter_table("device") as batch:
        batch.add_column(
            sa.Column("match_ae_only", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("device") as batch:
        batch.drop_column("match_ae_only")
