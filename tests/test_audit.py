"""The audit trail's data access: record in the caller's transaction, query, JSON lines, syslog."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, AuditEvent
from petray.site import audit

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _seed(session: Session) -> None:
    audit.record("login", session=session, actor="alice", source="10.0.0.5", at=T0)
    audit.record(
        "device.update",
        session=session,
        actor="alice",
        source="10.0.0.5",
        target="device pacs",
        detail={"changed": {"port": 104}},
        at=T0 + timedelta(minutes=1),
    )
    audit.record(
        "task.delete", session=session, actor="bob", target="task abc", at=T0 + timedelta(hours=1)
    )
    audit.record(
        "login.failed",
        session=session,
        actor="mallory",
        outcome="refused",
        at=T0 + timedelta(hours=2),
    )


def test_record_and_query_filters(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        _seed(session)
    with unit_of_work(sessions) as session:
        every = audit.query(audit.AuditQuery(), session=session)
        newest_first = ["login.failed", "task.delete", "device.update", "login"]
        assert [e.action for e in every] == newest_first
        by_actor = audit.query(audit.AuditQuery(actor="alice"), session=session)
        assert {e.action for e in by_actor} == {"login", "device.update"}
        # An action filter is a prefix: "login" finds login and login.failed.
        logins = audit.query(audit.AuditQuery(action="login"), session=session)
        assert [e.actor for e in logins] == ["mallory", "alice"]
        assert [
            e.action for e in audit.query(audit.AuditQuery(target="pacs"), session=session)
        ] == ["device.update"]
        window = audit.AuditQuery(since=T0 + timedelta(minutes=1), until=T0 + timedelta(hours=2))
        assert [e.action for e in audit.query(window, session=session)] == [
            "task.delete",
            "device.update",
        ]
        page = audit.query(audit.AuditQuery(limit=1, offset=1), session=session)
        assert [e.action for e in page] == ["task.delete"]
        assert every[2].detail == {"changed": {"port": 104}}
        assert every[0].at == T0 + timedelta(hours=2)


def test_target_filter_treats_wildcards_literally(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        audit.record("filter.create", session=session, target="filter 100%")
        audit.record("filter.create", session=session, target="filter 1000")
    with unit_of_work(sessions) as session:
        found = audit.query(audit.AuditQuery(target="100%"), session=session)
    assert [e.target for e in found] == ["filter 100%"]


def test_a_rolled_back_change_leaves_no_event(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(RuntimeError), unit_of_work(sessions) as session:
        audit.record("config.update", session=session, actor="alice")
        raise RuntimeError("the change failed")
    with unit_of_work(sessions) as session:
        assert session.scalar(select(func.count(AuditEvent.id))) == 0


def test_json_lines_export_round_trips(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        _seed(session)
    with unit_of_work(sessions) as session:
        lines = list(audit.json_lines(audit.iter_all(audit.AuditQuery(), session=session, batch=3)))
    assert len(lines) == 4 and all(line.endswith("\n") for line in lines)
    parsed = [json.loads(line) for line in lines]
    oldest_first = ["login", "device.update", "task.delete", "login.failed"]
    assert [p["action"] for p in parsed] == oldest_first
    assert parsed[1]["detail"] == {"changed": {"port": 104}}
    assert datetime.fromisoformat(parsed[0]["at"]) == T0


def test_association_rows_are_in_the_trail(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        audit.record_association(
            AssociationLog(
                direction="out",
                calling_ae="PETRAY",
                called_ae="PACS",
                peer_host="127.0.0.1:104",
                started=T0,
                ended=T0 + timedelta(seconds=3),
                instances=47,
                outcome="done",
            ),
            session=session,
        )
        audit.record_association(
            AssociationLog(
                direction="in",
                calling_ae="EVIL",
                called_ae="PETRAY",
                peer_host="10.9.9.9",
                started=T0,
                ended=T0,
                outcome="rejected: calling AE not a source",
            ),
            session=session,
        )
    with unit_of_work(sessions) as session:
        out, rejected = sorted(
            audit.query(audit.AuditQuery(action="association"), session=session),
            key=lambda e: e.action,
            reverse=True,
        )
        assert session.scalar(select(func.count(AssociationLog.id))) == 2
    assert (out.action, out.actor, out.source, out.outcome) == (
        "association.out",
        "PACS",
        "127.0.0.1:104",
        "ok",
    )
    assert out.detail["instances"] == 47
    assert (rejected.action, rejected.actor, rejected.outcome) == (
        "association.in",
        "EVIL",
        "rejected",
    )


@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


@pytest.fixture
def syslog(udp_listener: socket.socket) -> Iterator[str]:
    spec = f"127.0.0.1:{udp_listener.getsockname()[1]}"
    handler = audit.configure_syslog(spec)
    assert handler is not None
    assert audit.configure_syslog(spec) is handler  # installed once
    yield spec
    audit.trail.removeHandler(handler)
    handler.close()


def test_committed_events_reach_syslog_and_rolled_back_ones_do_not(
    sqlite_sessions: sessionmaker[Session], udp_listener: socket.socket, syslog: str
) -> None:
    with pytest.raises(RuntimeError), unit_of_work(sqlite_sessions) as session:
        audit.record("device.delete", session=session, actor="alice", target="device old")
        raise RuntimeError("refused")
    with unit_of_work(sqlite_sessions) as session:
        audit.record("task.retry", session=session, actor="bob", target="task 0123abcd")
    datagram = udp_listener.recv(65536).decode()
    # <priority>tag: JSON; authpriv (10) x 8 + info (6) = 86.
    assert datagram.startswith("<86>petray-audit: ")
    line = json.loads(datagram.split(": ", 1)[1].rstrip("\x00"))
    assert (line["action"], line["actor"], line["target"]) == ("task.retry", "bob", "task 0123abcd")
    udp_listener.settimeout(0.3)
    with pytest.raises(TimeoutError):
        udp_listener.recv(65536)  # the rolled-back deletion was never sent


@pytest.mark.parametrize("spec", ["nohost", "host:", "host:99999", ":514"])
def test_bad_syslog_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        audit.syslog_address(spec)


def test_syslog_socket_paths_are_accepted() -> None:
    assert audit.syslog_address("/dev/log") == "/dev/log"
    assert audit.syslog_address("logs.example:514") == ("logs.example", 514)


def test_the_database_refuses_to_change_or_delete_audit_rows(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        audit.record("login", session=session, actor="alice")
    for statement in (
        update(AuditEvent).values(actor="someone else"),
        delete(AuditEvent),
    ):
        with pytest.raises(DBAPIError, match="append-only"), unit_of_work(sessions) as session:
            session.execute(statement)
    with unit_of_work(sessions) as session:
        assert session.scalars(select(AuditEvent.actor)).all() == ["alice"]
