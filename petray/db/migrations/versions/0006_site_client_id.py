"""site_config.client_id: the site id sent to the service, editable by admins (issue 11)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Null: PETRAY_CLIENT_ID stays in force until an admin sets one in the console or CLI.
    with op.batch_alter_table("site_config") as batch:
        batch.add_column(sa.Column("client_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("site_config") as batch:
        batch.drop_column("client_id")
