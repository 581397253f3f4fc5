"""Associations in and out are in the audit trail (issue 10), with real DCMTK peers on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, AuditEvent, TaskDestination
from petray.dicom.scp import IngestLimits
from petray.dicom.scu import DicomNode
from petray.domain import Stage, State
from petray.settings import Settings
from petray.stages.delivery import PendingDestination
from tests.support.app import make_task
from tests.support.peers import (
    LOOPBACK,
    StoreSCP,
    free_port,
    run_echoscu,
    run_storescu,
    write_pet_series,
)
from tests.support.store_scu import store_scu
from tests.test_hostile_dicom import (
    AE_TITLE,
    Scp,
    production_pydicom_validation,
    restrict_sources,
    running,
)

__all__ = ["production_pydicom_validation"]


@pytest.fixture
def scp(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> Iterator[Scp]:
    with running(tmp_path / "instances", sqlite_sessions, IngestLimits()) as service:
        yield service


def _events(sessions: sessionmaker[Session], action: str) -> list[AuditEvent]:
    with sessions() as session:
        stmt = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        return list(session.scalars(stmt))


def _wait_events(sessions: sessionmaker[Session], action: str, count: int) -> list[AuditEvent]:
    # The SCP records an association when pynetdicom reports it closed, just after the peer
    # has gone: poll briefly instead of sleeping.
    import time

    deadline = time.monotonic() + 5
    while len(found := _events(sessions, action)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_associations_in_are_audited_accepted_and_rejected(scp: Scp, tmp_path: Path) -> None:
    paths = write_pet_series(tmp_path / "series", count=4)
    sent = run_storescu(paths, port=scp.port, called_ae=AE_TITLE, calling_ae="SCANNER7")
    assert sent.returncode == 0, sent.stderr
    (accepted,) = _wait_events(scp.sessions, "association.in", 1)
    assert (accepted.actor, accepted.source, accepted.outcome) == ("SCANNER7", LOOPBACK, "ok")
    assert accepted.target == f"SCANNER7 -> {AE_TITLE}"
    assert accepted.detail["instances"] == 4

    restrict_sources(scp)
    assert run_echoscu(port=scp.port, called_ae=AE_TITLE, calling_ae="INTRUDER").returncode != 0
    events = _wait_events(scp.sessions, "association.in", 2)
    assert (events[-1].actor, events[-1].outcome) == ("INTRUDER", "rejected")
    assert "no source device" in events[-1].detail["result"]


def _destination(sessions: sessionmaker[Session], node: DicomNode) -> PendingDestination:
    task_id = make_task(sessions, stage=Stage.SENDING, state=State.ACTIVE)
    with unit_of_work(sessions) as session:
        row = TaskDestination(
            task_id=task_id, name="pacs", ae_title=node.ae_title, host=node.host, port=node.port
        )
        session.add(row)
        session.flush()
        return PendingDestination(row.id, "pacs", node, frozenset())


def test_associations_out_are_audited_delivered_and_failed(
    settings: Settings,
    sqlite_sessions: sessionmaker[Session],
    dcmtk_storescp: StoreSCP,
    tmp_path: Path,
) -> None:
    actor = store_scu(sqlite_sessions, settings)
    files = write_pet_series(tmp_path / "out", count=3)
    node = DicomNode(dcmtk_storescp.aet, LOOPBACK, dcmtk_storescp.port)
    name, failure = actor._deliver(_destination(sqlite_sessions, node), files, "PETRAY")
    assert (name, failure) == ("pacs", None)
    down = DicomNode("DOWN", LOOPBACK, free_port())
    _, failure = actor._deliver(_destination(sqlite_sessions, down), files, "PETRAY")
    assert failure is not None

    delivered, refused = _events(sqlite_sessions, "association.out")
    assert (delivered.actor, delivered.source, delivered.outcome) == (
        dcmtk_storescp.aet,
        f"{LOOPBACK}:{dcmtk_storescp.port}",
        "ok",
    )
    assert delivered.detail["instances"] == 3
    assert (refused.actor, refused.outcome, refused.detail["instances"]) == ("DOWN", "waiting", 0)
    with sqlite_sessions() as session:
        logs = list(session.scalars(select(AssociationLog).order_by(AssociationLog.id)))
    assert [(log.direction, log.called_ae, log.instances) for log in logs] == [
        ("out", dcmtk_storescp.aet, 3),
        ("out", "DOWN", 0),
    ]
