"""The schema: Alembic migrations on SQLite and PostgreSQL, in step with the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import migrate, unit_of_work
from petray.db.models import Base, Device, Patient, Series, Study, Task
from petray.domain import Stage, State

HEAD_REVISION = "0009"


def add_series(session: Session, *, series_uid: str = "1.2.3.4.5") -> Series:
    patient = Patient(patient_id=f"P-{series_uid}")
    study = Study(study_instance_uid=f"{series_uid}.1", patient=patient)
    series = Series(series_instance_uid=series_uid, study=study, modality="PT")
    session.add_all([patient, study, series])
    session.flush()
    return series


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migration_creates_every_model_table(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    assert current_revision(engine) == HEAD_REVISION


def test_migrating_twice_is_a_no_op(engine: Engine, sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        session.add(Device(name="pacs", ae_title="PACS", host="127.0.0.1", port=104))
    migrate(engine)
    assert current_revision(engine) == HEAD_REVISION
    with sessions() as session:
        # A second upgrade must neither recreate tables nor lose rows.
        assert session.scalars(select(Device.name)).all() == ["pacs"]


def test_migration_matches_the_models_exactly(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_sqlite_runs_in_wal_mode_with_foreign_keys(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        assert engine.dialect.name == "postgresql"
        return
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_foreign_keys_are_enforced(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(IntegrityError), unit_of_work(sessions) as session:
        session.add(Task(id="orphan", series_pk=999_999, stage=Stage.COMPILING, state="active"))


def test_deleting_a_series_cascades_to_its_tasks(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        series = add_series(session)
        session.add(Task(id="t1", series_pk=series.id, stage=Stage.VALIDATING, state="active"))
    with unit_of_work(sessions) as session:
        session.execute(text("DELETE FROM series"))
    with sessions() as session:
        assert session.get(Task, "t1") is None


def _as_utc(value: datetime) -> datetime:
    # SQLite keeps no zone: petray writes UTC only and reads naive values as UTC (activity._aware).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def test_timestamps_round_trip_as_the_same_instant(sessions: sessionmaker[Session]) -> None:
    stamp = datetime(2025, 3, 2, 23, 59, 30, 123456, tzinfo=UTC)
    deadline = stamp + timedelta(hours=6)
    with unit_of_work(sessions) as session:
        series = add_series(session)
        session.add(
            Task(
                id="t1",
                series_pk=series.id,
                stage=Stage.PROCESSING,
                state=State.WAITING,
                created=stamp,
                updated=stamp,
                deadline=deadline,
            )
        )
    with sessions() as session:
        task = session.get(Task, "t1")
        assert task is not None
        created, read_deadline = task.created, task.deadline
    assert _as_utc(created) == stamp
    assert read_deadline is not None and _as_utc(read_deadline) == deadline
    if sessions.kw["bind"].dialect.name == "postgresql":
        # timestamptz keeps the instant and hands it back zone-aware.
        assert created.tzinfo is not None


def test_default_timestamps_are_recent(sessions: sessionmaker[Session]) -> None:
    before = datetime.now(UTC)
    with unit_of_work(sessions) as session:
        series = add_series(session)
        session.add(Task(id="t1", series_pk=series.id, stage=Stage.VALIDATING, state="active"))
    with sessions() as session:
        task = session.get(Task, "t1")
        assert task is not None
        created = task.created
    as_utc = _as_utc(created)
    assert before - timedelta(seconds=5) <= as_utc <= datetime.now(UTC) + timedelta(seconds=5)


def test_model_comparison_notices_a_drift(engine: Engine) -> None:
    # Guards the test above: an empty diff must come from equal schemas, not a blind comparison.
    from sqlalchemy import Column, Integer, MetaData, Table

    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    Table("not_migrated", drifted, Column("id", Integer, primary_key=True))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), drifted)
    assert [entry[0] for entry in diff] == ["add_table"]
