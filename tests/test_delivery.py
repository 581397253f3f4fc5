"""Destinations of a task and per-destination delivery progress, on both databases."""

from __future__ import annotations

from itertools import count

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Patient, SentInstance, Series, Study, Task, TaskDestination
from petray.dicom.scu import DicomNode
from petray.domain import Stage, State
from petray.errors import ValidationFailed
from petray.site.siteconfig import add_device, get_site_config
from petray.stages.delivery import pending_destinations, record_sent, set_destination_state
from petray.stages.destinations import assign_destinations

_serial = count(1)


def make_task(session: Session, *, calling_ae: str = "SCANNER") -> Task:
    n = next(_serial)
    patient = Patient(patient_id=f"P{n}")
    study = Study(study_instance_uid=f"1.2.826.0.3.{n}", patient=patient)
    series = Series(series_instance_uid=f"1.2.826.0.3.{n}.1", study=study)
    task = Task(
        id=f"{n:032x}",
        series=series,
        stage=Stage.VALIDATING,
        state=State.ACTIVE,
        calling_ae=calling_ae,
    )
    session.add_all([patient, study, series, task])
    session.flush()
    return task


def add(session: Session, name: str, port: int, *, source: bool = False, dest: bool = True) -> None:
    add_device(
        session=session,
        name=name,
        ae_title=name.upper(),
        host="127.0.0.1",
        port=port,
        is_source=source,
        is_destination=dest,
    )


def test_no_destination_fails_validation(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "scanner", 104, source=True, dest=False)
        task = make_task(session)
        with pytest.raises(ValidationFailed, match="no DICOM destination"):
            assign_destinations(task, session=session)
        assert task.destinations == []


def test_every_destination_is_assigned_once(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "pacs", 4242)
        add(session, "archive", 4243)
        add(session, "scanner", 104, source=True, dest=False)
        task = make_task(session)
        first = assign_destinations(task, session=session)
        task_id = task.id
    assert sorted(d.name for d in first) == ["archive", "pacs"]
    with unit_of_work(sessions) as session:
        stored = session.get(Task, task_id)
        assert stored is not None
        # Validation may run again after a retry: no second row per destination.
        again = assign_destinations(stored, session=session)
        assert sorted(d.name for d in again) == ["archive", "pacs"]
    with sessions() as session:
        rows = session.scalars(select(TaskDestination).where(TaskDestination.task_id == task_id))
        assert sorted((r.name, r.ae_title, r.port, r.state, r.sent) for r in rows) == [
            ("archive", "ARCHIVE", 4243, "waiting", 0),
            ("pacs", "PACS", 4242, "waiting", 0),
        ]


def test_a_destination_added_later_joins_on_revalidation(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "pacs", 4242)
        task = make_task(session)
        assign_destinations(task, session=session)
        add(session, "archive", 4243)
        assert sorted(d.name for d in assign_destinations(task, session=session)) == [
            "archive",
            "pacs",
        ]


def test_reply_to_sender_adds_the_known_sender(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "scanner", 11112, source=True, dest=False)
        get_site_config(session=session).reply_to_sender = True
        task = make_task(session, calling_ae="SCANNER")
        [destination] = assign_destinations(task, session=session)
        assert (destination.name, destination.ae_title, destination.port) == (
            "scanner",
            "SCANNER",
            11112,
        )


def test_reply_to_sender_does_not_duplicate_a_sender_that_is_a_destination(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        add(session, "scanner", 11112, source=True, dest=True)
        get_site_config(session=session).reply_to_sender = True
        task = make_task(session, calling_ae="SCANNER")
        assert [d.name for d in assign_destinations(task, session=session)] == ["scanner"]


def test_reply_to_an_unknown_sender_is_no_destination(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        get_site_config(session=session).reply_to_sender = True
        task = make_task(session, calling_ae="STRANGER")
        with pytest.raises(ValidationFailed):
            assign_destinations(task, session=session)


def test_reply_to_sender_off_ignores_the_sender(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "scanner", 11112, source=True, dest=False)
        add(session, "pacs", 4242)
        task = make_task(session, calling_ae="SCANNER")
        assert [d.name for d in assign_destinations(task, session=session)] == ["pacs"]


def test_two_devices_for_one_peer_get_one_destination_row(
    sessions: sessionmaker[Session],
) -> None:
    # Two names for the same AE/host/port (a copy made in the console) is one peer: sending
    # twice to it would store every instance twice.
    with unit_of_work(sessions) as session:
        for name in ("pacs", "pacs-copy"):
            add_device(
                session=session,
                name=name,
                ae_title="PACS",
                host="127.0.0.1",
                port=4242,
                is_source=False,
                is_destination=True,
            )
        task = make_task(session)
        assert len(assign_destinations(task, session=session)) == 1
        session.flush()


def test_progress_makes_resumption_duplicate_free(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        add(session, "pacs", 4242)
        add(session, "archive", 4243)
        task = make_task(session)
        assigned = assign_destinations(task, session=session)
        session.flush()
        rows = {d.name: d.id for d in assigned}
        task_id = task.id
    with unit_of_work(sessions) as session:
        pending = pending_destinations(task_id, session=session)
        assert [p.name for p in pending] == ["archive", "pacs"]
        assert pending[1].node == DicomNode(ae_title="PACS", host="127.0.0.1", port=4242)
        assert all(p.already_sent == frozenset() for p in pending)
        record_sent(rows["pacs"], "1.2.3.1", session=session)
        record_sent(rows["pacs"], "1.2.3.2", session=session)
        record_sent(rows["archive"], "1.2.3.1", session=session)
    with unit_of_work(sessions) as session:
        by_name = {p.name: p for p in pending_destinations(task_id, session=session)}
        assert by_name["pacs"].already_sent == {"1.2.3.1", "1.2.3.2"}
        assert by_name["archive"].already_sent == {"1.2.3.1"}
        progress = session.get(TaskDestination, rows["pacs"])
        assert progress is not None
        assert (progress.sent, progress.state) == (2, "sending")
        set_destination_state(rows["pacs"], "done", session=session)
        set_destination_state(rows["archive"], "failed", session=session, reason="refused")
    with sessions() as session:
        # A finished destination is not sent to again; a failed one is still pending.
        pending = pending_destinations(task_id, session=session)
        assert [p.name for p in pending] == ["archive"]
        failed = session.get(TaskDestination, rows["archive"])
        assert failed is not None
        assert (failed.state, failed.reason) == ("failed", "refused")


def test_the_same_instance_is_recorded_once_per_destination(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        add(session, "pacs", 4242)
        task = make_task(session)
        [row] = assign_destinations(task, session=session)
        session.flush()
        record_sent(row.id, "1.2.3.1", session=session)
        destination_pk = row.id
    with pytest.raises(IntegrityError), unit_of_work(sessions) as session:
        record_sent(destination_pk, "1.2.3.1", session=session)
    with sessions() as session:
        sent = session.scalars(
            select(SentInstance.sop_instance_uid).where(
                SentInstance.destination_pk == destination_pk
            )
        ).all()
        assert sent == ["1.2.3.1"]
        progress = session.get(TaskDestination, destination_pk)
        assert progress is not None and progress.sent == 1
