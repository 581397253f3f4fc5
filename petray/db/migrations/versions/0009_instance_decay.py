"""instance.decay_factor, frame_reference_time: read once at ingest (issue 13)

The Validator compares every slice's DecayFactor with the series' DecayCorrection. It read
them from the files, about 2 ms a file (1.3 s for 645 slices, the whole validating stage);
the Store SCP parses each header anyway, so it now records the two values with the row.
``decay_recorded`` is false for the rows stored before: the Validator reads their files.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.add_column(
            sa.Column("decay_recorded", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("decay_factor", sa.Float(), nullable=True))
        batch.add_column(sa.Column("frame_reference_time", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instance") as batch:
        batch.drop_column("frame_reference_time")
        batch.drop_column("decay_factor")
        batch.drop_column("decay_recorded")
