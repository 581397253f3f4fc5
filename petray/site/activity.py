"""What the gateway has been doing: task listings, task counts, and the activity log (issue 5).

Read-only queries for the console and REST API, plus removal of a deleted task's files (the
deletion itself is ``petray.tasks.delete_task``). Listing queries select plain columns (no ORM
objects, no lazy loads) so that a page stays one or two queries with thousands of tasks.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from petray import task_files
from petray.db.models import (
    AssociationLog,
    Patient,
    Series,
    Study,
    Task,
    TaskEvent,
)
from petray.task_files import FileCount

log = logging.getLogger(__name__)

SortKey = Literal["created", "updated", "stage", "state", "sender", "images"]
SORT_KEYS: tuple[SortKey, ...] = ("created", "updated", "stage", "state", "sender", "images")
_SORT_COLUMNS = {
    "created": Task.created,
    "updated": Task.updated,
    "stage": Task.stage,
    "state": Task.state,
    "sender": Task.calling_ae,
    "images": Task.images,
}
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class TaskQuery:
    state: str | None = None
    stage: str | None = None
    sender: str | None = None
    # Issue 11: a technologist finds a study by patient id or accession number (exact match).
    patient_id: str | None = None
    accession: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    sort: SortKey = "created"
    descending: bool = True
    page: int = 1
    page_size: int = 50

    def __post_init__(self) -> None:
        if self.sort not in SORT_KEYS:
            raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}")
        if self.page < 1 or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page must be >= 1 and page size 1-{MAX_PAGE_SIZE}")


@dataclass(frozen=True)
class TaskRow:
    id: str
    stage: str
    state: str
    images: int
    expected_images: int | None
    calling_ae: str
    peer_host: str
    reason: str
    created: datetime
    updated: datetime
    series_description: str
    modality: str
    patient_name: str
    patient_id: str = ""
    accession_number: str = ""
    study_date: str = ""


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


_S = TypeVar("_S", bound=Select[*tuple[Any, ...]])


def _filtered(stmt: _S, query: TaskQuery) -> _S:
    if query.state:
        stmt = stmt.where(Task.state == query.state)
    if query.stage:
        stmt = stmt.where(Task.stage == query.stage)
    if query.sender:
        pattern = f"%{query.sender.strip()}%"
        stmt = stmt.where(or_(Task.calling_ae.ilike(pattern), Task.peer_host.ilike(pattern)))
    if query.patient_id:
        stmt = stmt.where(Patient.patient_id == query.patient_id.strip())
    if query.accession:
        stmt = stmt.where(Study.accession_number == query.accession.strip())
    if query.since:
        stmt = stmt.where(Task.created >= query.since)
    if query.until:
        stmt = stmt.where(Task.created < query.until)
    return stmt


def _with_patient(stmt: _S) -> _S:
    return (
        stmt.join(Series, Task.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )


def query_tasks(query: TaskQuery, *, session: Session) -> TaskPage:
    counted = select(func.count(Task.id))
    if query.patient_id or query.accession:
        counted = _with_patient(counted)
    total = session.scalar(_filtered(counted, query)) or 0
    column = _SORT_COLUMNS[query.sort]
    order = column.desc() if query.descending else column.asc()
    stmt = _filtered(
        select(
            Task.id,
            Task.stage,
            Task.state,
            Task.images,
            Task.expected_images,
            Task.calling_ae,
            Task.peer_host,
            Task.reason,
            Task.created,
            Task.updated,
            Series.description,
            Series.modality,
            Patient.name,
            Patient.patient_id,
            Study.accession_number,
            Study.study_date,
        )
        .join(Series, Task.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id),
        query,
    )
    stmt = stmt.order_by(order, Task.id).limit(query.page_size)
    stmt = stmt.offset((query.page - 1) * query.page_size)
    rows = [
        TaskRow(
            id=r[0],
            stage=r[1],
            state=r[2],
            images=r[3],
            expected_images=r[4],
            calling_ae=r[5],
            peer_host=r[6],
            reason=r[7],
            created=r[8],
            updated=r[9],
            series_description=r[10],
            modality=r[11],
            patient_name=r[12],
            patient_id=r[13],
            accession_number=r[14],
            study_date=r[15],
        )
        for r in session.execute(stmt)
    ]
    return TaskPage(rows=rows, total=total, page=query.page, page_size=query.page_size)


def count_by_state(*, session: Session) -> dict[str, int]:
    rows = session.execute(select(Task.state, func.count(Task.id)).group_by(Task.state))
    return {state: count for state, count in rows}


@dataclass(frozen=True)
class HourBucket:
    start: datetime
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def tasks_by_state_per_hour(
    *, session: Session, hours: int = 24, now: datetime | None = None
) -> list[HourBucket]:
    """Tasks last updated in each of the last ``hours`` hours, by their current state."""
    now = now or datetime.now(UTC)
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    counters: dict[datetime, Counter[str]] = {
        first + timedelta(hours=i): Counter() for i in range(hours)
    }
    rows = session.execute(select(Task.state, Task.updated).where(Task.updated >= first))
    for state, updated in rows:
        hour = updated.replace(minute=0, second=0, microsecond=0)
        if hour in counters:
            counters[hour][state] += 1
    return [HourBucket(start=h, counts=dict(c)) for h, c in counters.items()]


def remove_files(paths: list[Path]) -> FileCount:
    """Remove a deleted or purged task's files (``petray.task_files``); missing ones are fine."""
    return task_files.remove(paths)


ActivityKind = Literal["association", "task"]


@dataclass(frozen=True)
class ActivityQuery:
    kind: ActivityKind | None = None
    who: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


@dataclass(frozen=True)
class ActivityEntry:
    """One line of the activity log. Deliberately holds no patient data (AEs, hosts, counts)."""

    at: datetime
    kind: ActivityKind
    who: str
    what: str
    instances: int | None
    outcome: str
    task_id: str = ""


def list_activity(query: ActivityQuery, *, session: Session) -> list[ActivityEntry]:
    entries: list[ActivityEntry] = []
    if query.kind in (None, "association"):
        stmt = select(AssociationLog)
        if query.who:
            pattern = f"%{query.who.strip()}%"
            stmt = stmt.where(
                or_(
                    AssociationLog.calling_ae.ilike(pattern),
                    AssociationLog.called_ae.ilike(pattern),
                    AssociationLog.peer_host.ilike(pattern),
                )
            )
        if query.since:
            stmt = stmt.where(AssociationLog.started >= query.since)
        if query.until:
            stmt = stmt.where(AssociationLog.started < query.until)
        stmt = stmt.order_by(AssociationLog.started.desc()).limit(query.limit)
        for a in session.scalars(stmt):
            arrow = "from" if a.direction == "in" else "to"
            entries.append(
                ActivityEntry(
                    at=a.started,
                    kind="association",
                    who=f"{a.calling_ae}@{a.peer_host}" if a.direction == "in" else a.called_ae,
                    what=f"association {arrow} {a.peer_host} ({a.calling_ae} -> {a.called_ae})",
                    instances=a.instances,
                    outcome=a.outcome or ("refused" if a.refused else ""),
                )
            )
    if query.kind in (None, "task"):
        stmt2 = select(
            TaskEvent.at,
            TaskEvent.task_id,
            TaskEvent.stage,
            TaskEvent.state,
            TaskEvent.message,
            Task.calling_ae,
        ).join(Task, TaskEvent.task_id == Task.id)
        if query.who:
            pattern = f"%{query.who.strip()}%"
            stmt2 = stmt2.where(or_(Task.calling_ae.ilike(pattern), Task.peer_host.ilike(pattern)))
        if query.since:
            stmt2 = stmt2.where(TaskEvent.at >= query.since)
        if query.until:
            stmt2 = stmt2.where(TaskEvent.at < query.until)
        stmt2 = stmt2.order_by(TaskEvent.at.desc(), TaskEvent.id.desc()).limit(query.limit)
        for at, task_id, stage, state, message, calling_ae in session.execute(stmt2):
            entries.append(
                ActivityEntry(
                    at=at,
                    kind="task",
                    who=calling_ae,
                    what=f"task {stage}",
                    instances=None,
                    outcome=f"{state}: {message}" if message else state,
                    task_id=task_id,
                )
            )
    entries.sort(key=lambda e: e.at, reverse=True)
    return entries[: query.limit]


CSV_COLUMNS = ("at", "kind", "who", "what", "instances", "outcome", "task_id")
# AE titles and messages come from the network; a leading = + - @ would run as a spreadsheet
# formula when the export is opened (CSV injection), so such cells are quoted with a '.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def activity_csv(entries: list[ActivityEntry]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow(
            [
                e.at.isoformat(),
                e.kind,
                _cell(e.who),
                _cell(e.what),
                "" if e.instances is None else e.instances,
                _cell(e.outcome),
                e.task_id,
            ]
        )
    return buffer.getvalue()
