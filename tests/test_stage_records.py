"""The typed stage records (issue 14): stored versioned, read back typed, migrated from before."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from petray.db.engine import make_sessionmaker, migrate, unit_of_work
from petray.db.models import Task
from petray.demo.tasks import add_task
from petray.domain import Stage
from petray.errors import PermanentError
from petray.stages.records import Packed, Quant, QuantCheck, Validated

PACKED = Packed(
    archive="/home/work/t.zip",
    sha256="ab" * 32,
    shape=(3, 4, 5),
    spacing_zyx=(2.0, 1.5, 1.5),
    input_peak=1234.5,
    slice_paths=("/a/1.dcm", "/a/2.dcm", "/a/3.dcm"),
)


@dataclass
class Row:
    id: str = "t1"
    details: dict[str, Any] = field(default_factory=dict)


def test_a_record_is_stored_with_its_version_and_read_back_typed() -> None:
    row = Row(details={"other": 1})
    PACKED.put(row)
    assert row.details["other"] == 1
    assert row.details["packed"]["version"] == 1
    assert row.details["packed"]["shape"] == [3, 4, 5]  # JSON, as the column stores it
    assert Packed.of(row) == PACKED
    assert Packed.of(row).shape == (3, 4, 5)


def test_a_later_stage_missing_a_record_fails_naming_who_writes_it() -> None:
    with pytest.raises(PermanentError, match="task t1 has no packed record \\(the Packer"):
        Packed.of(Row())
    assert Validated.find({}) is None


def test_a_record_of_another_version_is_refused_with_the_way_out() -> None:
    row = Row(details={"packed": {**PACKED.stored(), "version": 2}})
    with pytest.raises(PermanentError, match=r"version 2; this petray reads version 1.*migrate"):
        Packed.of(row)


def test_a_mistyped_or_unknown_field_is_refused() -> None:
    stored = PACKED.stored()
    with pytest.raises(PermanentError, match="packed record is invalid"):
        Packed.find({"packed": {**stored, "shape": [3, 4]}})
    with pytest.raises(PermanentError, match="packed record is invalid"):
        Packed.find({"packed": {**stored, "slice_path": []}})


def test_records_are_frozen() -> None:
    with pytest.raises(ValueError):
        PACKED.sha256 = "x"  # type: ignore[misc]


def test_quant_shows_its_check_without_empty_fields() -> None:
    quant = Quant(
        suv_factor=None,
        suv_reason="no weight",
        body_threshold_bqml=100.0,
        received={"max_bqml": 5.0},
        check=QuantCheck(status="pending"),
    )
    assert quant.public()["check"] == {"status": "pending", "breaches": []}
    assert quant.public()["suv_factor"] is None


# -- migration 0008 -------------------------------------------------------------------------

LOOSE = {
    "check_model": {"client_id": "site"},
    "processing": {"HalfLife": 6586.2},
    "archive": "/w/t.zip",
    "sha256": "cd" * 32,
    "shape": [2, 3, 4],
    "spacing_zyx": [3.0, 2.0, 2.0],
    "input_peak": 10.0,
    "slice_paths": ["/i/1.dcm", "/i/2.dcm"],
    "quant": {
        "suv_factor": 0.001,
        "suv_reason": "",
        "body_threshold_bqml": 50.0,
        "received": {"max_bqml": 9.0},
        "series": [],
        "check": {"status": "held", "breaches": ["SUVmax +30 %"]},
    },
}


def _task_with(sessions: sessionmaker[Any], details: dict[str, Any]) -> str:
    with unit_of_work(sessions) as session:
        task_id = add_task(session, stage=Stage.UPLOADING)
        session.get_one(Task, task_id).details = details
    return task_id


def test_migration_0008_types_the_loose_keys_of_stored_tasks(engine: Engine) -> None:
    migrate(engine, "0007")
    sessions = make_sessionmaker(engine)
    packed_id = _task_with(sessions, LOOSE)
    # Packed before issue 9: no input_peak; validated only: no Packer keys.
    old_id = _task_with(sessions, {k: v for k, v in LOOSE.items() if k != "input_peak"})
    validated_id = _task_with(sessions, {k: LOOSE[k] for k in ("check_model", "processing")})
    migrate(engine)
    with unit_of_work(sessions) as session:
        task = session.get_one(Task, packed_id)
        assert set(task.details) == {"validated", "packed", "quant"}
        assert Validated.of(task).processing == {"HalfLife": 6586.2}
        assert Packed.of(task).slice_paths == ("/i/1.dcm", "/i/2.dcm")
        assert Packed.of(task).input_peak == 10.0
        assert Quant.of(task).check.breaches == ("SUVmax +30 %",)
        assert Packed.of(session.get_one(Task, old_id)).input_peak is None
        only_validated = session.get_one(Task, validated_id)
        assert set(only_validated.details) == {"validated"}
        assert Packed.find(only_validated.details) is None
    migrate(engine, "0007")
    with unit_of_work(sessions) as session:
        assert session.get_one(Task, packed_id).details == LOOSE
    migrate(engine)
