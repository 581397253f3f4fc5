"""The audit trail (issue 10): who changed what, when and from where; associations; callbacks.

Rows are append-only (nothing here updates or deletes one) and hold no patient data: targets are
task ids, names of devices, filters and users, AE titles and addresses. ``record`` adds a row to
the caller's unit of work, so an event is in the trail exactly when the change it describes was
committed; once committed, the line is also handed to the ``petray.site.audit`` logger, which
``configure_syslog`` connects to a syslog server when the site asks for it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, event, or_, select
from sqlalchemy.orm import Session

from petray.db.models import AssociationLog, AuditEvent
from petray.errors import ConfigurationError

log = logging.getLogger(__name__)
# Separate from ``log``: what goes to syslog is exactly one JSON object per audit event.
trail = logging.getLogger("petray.site.audit.trail")

# Actors that are not console users.
GATEWAY = "petray"  # the gateway's own decisions (retention)
SERVICE = "service"  # the processing service, authenticated by the callback token
PEER = "dicom"  # a DICOM peer (associations in)

MAX_LIMIT = 5000
_S = TypeVar("_S", bound=Select[Any])
_PENDING_KEY = "petray.site.audit.pending"
_COLUMN_LENGTHS = {"actor": 128, "source": 255, "action": 64, "target": 255, "outcome": 32}


@dataclass(frozen=True)
class AuditEntry:
    """An audit row as plain values (what the API returns and the export writes)."""

    id: int
    at: datetime
    actor: str
    source: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


def _clip(name: str, value: str) -> str:
    return value[: _COLUMN_LENGTHS[name]]


def record(
    action: str,
    *,
    session: Session,
    actor: str = "",
    source: str = "",
    target: str = "",
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """Add one event to the caller's unit of work (never commits).

    ``detail`` must be JSON-serialisable and free of patient data and secrets.
    """
    row = AuditEvent(
        at=at or datetime.now(UTC),
        actor=_clip("actor", actor),
        source=_clip("source", source),
        action=_clip("action", action),
        target=_clip("target", target),
        outcome=_clip("outcome", outcome),
        detail=dict(detail or {}),
    )
    session.add(row)
    # The line is built now (the row's values are final) and sent only once committed.
    _pending(session).append(_line(row))
    return row


def record_association(row: AssociationLog, *, session: Session) -> AuditEvent:
    """Keep an association for the activity log and the audit trail, in one transaction."""
    session.add(row)
    incoming = row.direction == "in"
    outcome = row.outcome or ("refused" if row.refused else "ok")
    return record(
        "association.in" if incoming else "association.out",
        session=session,
        actor=(row.calling_ae if incoming else row.called_ae) or "",
        source=row.peer_host or "",
        target=f"{row.calling_ae} -> {row.called_ae}",
        outcome="ok" if outcome.startswith(("ok", "released", "done")) else _short(outcome),
        detail={
            "instances": row.instances or 0,
            "refused": row.refused or 0,
            "result": outcome,
            "started": row.started.isoformat() if row.started else None,
            "ended": row.ended.isoformat() if row.ended else None,
        },
        at=row.ended or row.started,
    )


def _short(outcome: str) -> str:
    """The first word of a free-text outcome ("rejected: ..." -> "rejected")."""
    word = outcome.split(":", 1)[0].split(";", 1)[0].strip()
    return word or "unknown"


# -- queries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    action: str | None = None  # a prefix: "task" finds task.retry, task.delete...
    target: str | None = None  # a substring
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT or self.offset < 0:
            raise ValueError(f"limit must be 1-{MAX_LIMIT} and offset >= 0")


def _filtered(stmt: _S, q: AuditQuery) -> _S:
    if q.actor:
        stmt = stmt.where(AuditEvent.actor == q.actor.strip())
    if q.action:
        action = q.action.strip()
        stmt = stmt.where(or_(AuditEvent.action == action, AuditEvent.action.startswith(action)))
    if q.target:
        stmt = stmt.where(AuditEvent.target.contains(q.target.strip(), autoescape=True))
    if q.since:
        stmt = stmt.where(AuditEvent.at >= q.since)
    if q.until:
        stmt = stmt.where(AuditEvent.at < q.until)
    return stmt


def query(q: AuditQuery, *, session: Session) -> list[AuditEntry]:
    """Events matching ``q``, newest first."""
    stmt = _filtered(select(AuditEvent), q)
    stmt = stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(q.limit)
    return [_entry(row) for row in session.scalars(stmt.offset(q.offset))]


def iter_all(q: AuditQuery, *, session: Session, batch: int = 1000) -> Iterator[AuditEntry]:
    """Every event matching ``q`` (its limit and offset ignored), oldest first, in batches."""
    last_id = 0
    while True:
        stmt = _filtered(select(AuditEvent), q).where(AuditEvent.id > last_id)
        rows = list(session.scalars(stmt.order_by(AuditEvent.id).limit(batch)))
        for row in rows:
            yield _entry(row)
        if len(rows) < batch:
            return
        last_id = rows[-1].id


def _entry(row: AuditEvent) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        source=row.source,
        action=row.action,
        target=row.target,
        outcome=row.outcome,
        detail=dict(row.detail or {}),
    )


def json_line(entry: AuditEntry) -> str:
    return json.dumps(entry.as_dict(), sort_keys=True, default=str)


def json_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """The export format: one JSON object per line, each line ending in a newline."""
    for entry in entries:
        yield json_line(entry) + "\n"


# -- syslog ----------------------------------------------------------------------------------


def _line(row: AuditEvent) -> str:
    values = {name: getattr(row, name) for name in ("actor", "source", "action", "target")}
    values.update(outcome=row.outcome, detail=row.detail, at=row.at.isoformat())
    return json.dumps(values, sort_keys=True, default=str)


def _pending(session: Session) -> list[str]:
    pending: list[str] | None = session.info.get(_PENDING_KEY)
    if pending is None:
        pending = session.info[_PENDING_KEY] = []
        event.listen(session, "after_commit", _send_committed)
        event.listen(session, "after_soft_rollback", _drop_uncommitted)
    return pending


def _send_committed(session: Session) -> None:
    lines = session.info.get(_PENDING_KEY) or []
    session.info[_PENDING_KEY] = []
    for line in lines:
        trail.info(line)


def _drop_uncommitted(session: Session, _previous: Any) -> None:
    session.info[_PENDING_KEY] = []


class _AuditSyslog(logging.handlers.SysLogHandler):
    """A syslog handler that says which spec it was made for, so it is installed once."""

    spec = ""


def syslog_address(spec: str) -> str | tuple[str, int]:
    """``host:port`` (UDP) or a local socket path such as ``/dev/log``."""
    spec = spec.strip()
    if spec.startswith("/"):
        return spec
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"audit syslog must be host:port or a socket path, not {spec!r}")
    return host.strip("[]"), int(port)


def configure_syslog(spec: str | None) -> logging.Handler | None:
    """Send every committed audit event of this process to syslog (idempotent per spec)."""
    if not spec:
        return None
    for handler in trail.handlers:
        if isinstance(handler, _AuditSyslog) and handler.spec == spec:
            return handler
    try:
        address = syslog_address(spec)
    except ValueError as exc:
        raise ConfigurationError(f"PETRAY_AUDIT_SYSLOG: {exc}") from None
    handler = _AuditSyslog(
        address=address,
        facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
        socktype=socket.SOCK_DGRAM if isinstance(address, tuple) else None,
    )
    handler.spec = spec
    # RFC 3164 tag: lets the syslog server route petray's audit lines to their own file.
    handler.setFormatter(logging.Formatter("petray-audit: %(message)s"))
    trail.addHandler(handler)
    trail.setLevel(logging.INFO)
    log.info("audit trail copied to syslog at %s", spec)
    return handler
