"""Issue 14: the stage records on a task are typed and versioned

Until now the Validator and the Packer wrote loose keys into ``task.details``; each record now
has its own key holding ``{"version": 1, ...}`` (petray/stages/records.py). This rewrites the
stored tasks: their files and their place in the pipeline stay as they were.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 07:30:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen here: a migration keeps describing the rows of its time whatever the code becomes.
VALIDATED = ("check_model", "processing")
PACKED = ("archive", "sha256", "shape", "spacing_zyx", "input_peak", "slice_paths")
QUANT = "quant"
VERSION = "version"

TASK = sa.table("task", sa.column("id", sa.String), sa.column("details", sa.JSON))


def to_records(details: dict[str, Any]) -> dict[str, Any]:
    """Version 1 records from the loose keys (a task that never got that far has none)."""
    loose = dict(details)
    records: dict[str, Any] = {}
    if all(key in loose for key in VALIDATED):
        records["validated"] = {VERSION: 1, **{key: loose.pop(key) for key in VALIDATED}}
    if all(key in loose for key in PACKED if key != "input_peak"):
        # input_peak came with issue 9: tasks packed before it have none.
        packed = {key: loose.pop(key) for key in PACKED if key in loose}
        records["packed"] = {VERSION: 1, "input_peak": None, **packed}
    if isinstance(loose.get(QUANT), dict) and VERSION not in loose[QUANT]:
        records[QUANT] = {VERSION: 1, **loose.pop(QUANT)}
    return {**loose, **records}


def to_loose(details: dict[str, Any]) -> dict[str, Any]:
    loose = dict(details)
    for key in ("validated", "packed"):
        record = loose.pop(key, None)
        if isinstance(record, dict):
            loose.update({k: v for k, v in record.items() if k != VERSION})
    if isinstance(loose.get(QUANT), dict):
        loose[QUANT] = {k: v for k, v in loose[QUANT].items() if k != VERSION}
    return loose


def _rewrite(change: Any) -> None:
    bind = op.get_bind()
    for task_id, details in bind.execute(sa.select(TASK.c.id, TASK.c.details)).all():
        if not details:
            continue
        rewritten = change(details)
        if rewritten != details:
            bind.execute(sa.update(TASK).where(TASK.c.id == task_id).values(details=rewritten))


def upgrade() -> None:
    _rewrite(to_records)


def downgrade() -> None:
    _rewrite(to_loose)
