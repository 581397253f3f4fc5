"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:34:36.219427
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "association_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("called_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_host", sa.String(length=255), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended", sa.DateTime(timezone=True), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_association_log_started"), "association_log", ["started"], unique=False
    )
    op.create_table(
        "device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("is_source", sa.Boolean(), nullable=False),
        sa.Column("is_destination", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "patient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=324), nullable=False),
        sa.Column("birth_date", sa.String(length=8), nullable=False),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id"),
    )
    op.create_table(
        "post_filter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=False),
        sa.Column("fwhm_mm", sa.Float(), nullable=False),
        sa.Column("noise_pct", sa.Float(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("scanner_model", sa.String(length=64), nullable=False),
        sa.Column("radiopharmaceutical", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "radiopharmaceutical",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("nuclide", sa.String(length=16), nullable=False),
        sa.Column("half_life_s", sa.Float(), nullable=False),
        sa.Column("synonyms", sa.JSON(), nullable=False),
        sa.Column("codes", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "site_config",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("min_images", sa.Integer(), nullable=False),
        sa.Column("slice_gap_tolerance", sa.Float(), nullable=False),
        sa.Column("inactivity_wait_s", sa.Float(), nullable=False),
        sa.Column("abort_timeout_s", sa.Float(), nullable=False),
        sa.Column("reply_to_sender", sa.Boolean(), nullable=False),
        sa.Column("restrict_sources", sa.Boolean(), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=True),
        sa.Column("dicom_port", sa.Integer(), nullable=True),
        sa.Column("remote_url", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "user_account",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_pk", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_pk"], ["user_account.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patient.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_instance_uid"),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["study.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_instance_uid"),
    )
    op.create_table(
        "task",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_host", sa.String(length=255), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("expected_images", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("date_shift_days", sa.Integer(), nullable=False),
        sa.Column("radiopharmaceutical", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["series_pk"], ["series.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_stage_state", "task", ["stage", "state"], unique=False)
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("peer_host", sa.String(length=255), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("slice_position", sa.Float(), nullable=False),
        sa.Column("slice_thickness", sa.Float(), nullable=True),
        sa.Column("number_of_slices", sa.Integer(), nullable=True),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["series_pk"], ["series.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_instance_sop_instance_uid"), "instance", ["sop_instance_uid"], unique=False
    )
    op.create_index(op.f("ix_instance_task_id"), "instance", ["task_id"], unique=False)
    op.create_index("ix_instance_unassigned", "instance", ["task_id", "series_pk"], unique=False)
    op.create_table(
        "output_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("filter_id", sa.Integer(), nullable=True),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_number", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=64), nullable=False),
        sa.Column("directory", sa.Text(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_output_series_task_id"), "output_series", ["task_id"], unique=False)
    op.create_table(
        "task_destination",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "ae_title", "host", "port"),
    )
    op.create_index(
        op.f("ix_task_destination_task_id"), "task_destination", ["task_id"], unique=False
    )
    op.create_table(
        "task_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["task.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_task_event_task_id"), "task_event", ["task_id"], unique=False)
    op.create_table(
        "sent_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("destination_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["destination_pk"], ["task_destination.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("destination_pk", "sop_instance_uid"),
    )
    op.create_index(
        op.f("ix_sent_instance_destination_pk"), "sent_instance", ["destination_pk"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sent_instance_destination_pk"), table_name="sent_instance")
    op.drop_table("sent_instance")
    op.drop_index(op.f("ix_task_event_task_id"), table_name="task_event")
    op.drop_table("task_event")
    op.drop_index(op.f("ix_task_destination_task_id"), table_name="task_destination")
    op.drop_table("task_destination")
    op.drop_index(op.f("ix_output_series_task_id"), table_name="output_series")
    op.drop_table("output_series")
    op.drop_index("ix_instance_unassigned", table_name="instance")
    op.drop_index(op.f("ix_instance_task_id"), table_name="instance")
    op.drop_index(op.f("ix_instance_sop_instance_uid"), table_name="instance")
    op.drop_table("instance")
    op.drop_index("ix_task_stage_state", table_name="task")
    op.drop_table("task")
    op.drop_table("series")
    op.drop_table("study")
    op.drop_table("api_token")
    op.drop_table("user_account")
    op.drop_table("site_config")
    op.drop_table("radiopharmaceutical")
    op.drop_table("post_filter")
    op.drop_table("patient")
    op.drop_table("device")
    op.drop_index(op.f("ix_association_log_started"), table_name="association_log")
    op.drop_table("association_log")
