"""Retention (issue 10): finished tasks' files go after a while; the task rows stay as history.

Files of done tasks (received instances, work archives, outputs, previews) are removed
``retention_done_days`` after the task finished, those of failed and cancelled tasks after
``retention_failed_days`` (kept longer: someone may still look into them). When free disk falls
below ``DISK_HEADROOM`` times the floor (``PETRAY_MIN_FREE_DISK_MB``, under which the Store SCP
refuses instances), finished tasks are purged oldest first, done ones before failed ones, until
the headroom is back. Active and waiting tasks are never touched.

Each task is claimed in its own transaction (``files_purged_at`` set, an audit event recorded)
and its files are removed only after that commit, as a task delete does: a crash in between
leaves files nobody points at, never a row pointing at missing files. Time and free disk are
arguments, so the rules are tested with a fake clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.domain import State
from petray.settings import Settings
from petray.site import audit
from petray.site.siteconfig import get_site_config
from petray.task_files import TaskFiles, measure, remove

log = logging.getLogger(__name__)

# Purge for disk space while free space is under this multiple of the ingest floor.
DISK_HEADROOM = 2.0
DONE = (State.DONE.value,)
FAILED = (State.FAILED.value, State.CANCELLED.value)


@dataclass(frozen=True)
class RetentionPolicy:
    done_days: int
    failed_days: int
    min_free_bytes: int

    def __post_init__(self) -> None:
        if self.done_days < 1 or self.failed_days < 1:
            raise ValueError("retention periods are at least one day")

    @property
    def wanted_free_bytes(self) -> int:
        return int(self.min_free_bytes * DISK_HEADROOM)

    @classmethod
    def load(cls, settings: Settings, *, session: Session) -> RetentionPolicy:
        config = get_site_config(session=session)
        return cls(
            done_days=config.retention_done_days,
            failed_days=config.retention_failed_days,
            min_free_bytes=settings.min_free_disk_mb * 2**20,
        )


@dataclass(frozen=True)
class PurgedTask:
    task_id: str
    state: str
    finished: datetime
    reason: str  # "age" or "disk"
    files: int
    bytes: int


@dataclass
class PurgeReport:
    dry_run: bool
    tasks: list[PurgedTask] = field(default_factory=list)
    free_before: int | None = None

    @property
    def files(self) -> int:
        return sum(t.files for t in self.tasks)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tasks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "tasks": len(self.tasks),
            "files": self.files,
            "bytes": self.bytes,
            "free_before": self.free_before,
            "purged": [{**t.__dict__, "finished": t.finished.isoformat()} for t in self.tasks],
        }

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return f"{verb} {len(self.tasks)} tasks, {self.files} files, {format_bytes(self.bytes)}"


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover (the loop always returns)


def _finished(states: tuple[str, ...]) -> Any:
    return (
        select(Task.id, Task.state, Task.updated)
        .where(Task.state.in_(states))
        .where(Task.files_purged_at.is_(None))
        .order_by(Task.updated, Task.id)
    )


def expired(
    policy: RetentionPolicy, *, now: datetime, session: Session
) -> list[tuple[str, str, datetime]]:
    """(id, state, finished) of tasks whose files are past their retention, oldest first."""
    rows: list[tuple[str, str, datetime]] = []
    for states, days in ((DONE, policy.done_days), (FAILED, policy.failed_days)):
        cutoff = now - timedelta(days=days)
        rows += session.execute(_finished(states).where(Task.updated < cutoff)).all()
    return sorted(rows, key=lambda r: (r[2], r[0]))


def oldest_finished(*, session: Session) -> Iterator[tuple[str, str, datetime]]:
    """Unpurged finished tasks for disk pressure: done ones oldest first, then failed ones."""
    for states in (DONE, FAILED):
        yield from session.execute(_finished(states))


def claim(files: TaskFiles, *, now: datetime, session: Session) -> list[Path] | None:
    """Mark a finished task's files purged; returns the paths to remove after the commit.

    None when the task went away or is no longer finished (retried meanwhile): nothing to do.
    """
    task_id = files.task_id
    task = session.scalars(select(Task).where(Task.id == task_id).with_for_update()).one_or_none()
    if task is None or task.files_purged_at is not None or task.state not in DONE + FAILED:
        return None
    paths = files.paths(session=session)
    # ``updated`` is kept as it was: it is when the task finished, which the history shows.
    session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(files_purged_at=now, updated=Task.updated)
        .execution_options(synchronize_session=False)
    )
    return paths


def run(
    sessions: sessionmaker[Session],
    policy: RetentionPolicy,
    files_of: Callable[[str], TaskFiles],
    *,
    now: datetime,
    free_bytes: Callable[[], int],
    dry_run: bool = False,
    actor: str = audit.GATEWAY,
    source: str = "",
) -> PurgeReport:
    """Apply the policy: expired tasks, then oldest finished ones while disk is short."""
    report = PurgeReport(dry_run=dry_run, free_before=free_bytes())
    with unit_of_work(sessions) as session:
        due = expired(policy, now=now, session=session)
    for task_id, state, finished in due:
        _purge_one(sessions, report, files_of(task_id), state, finished, "age", now, actor, source)
    # A dry run frees nothing, so the disk is judged by what it would have freed.
    while (free_bytes() + (report.bytes if dry_run else 0)) < policy.wanted_free_bytes:
        done_ids = {t.task_id for t in report.tasks}
        with unit_of_work(sessions) as session:
            following = next(
                (r for r in oldest_finished(session=session) if r[0] not in done_ids), None
            )
        if following is None:
            log.warning("free disk is below twice the floor and no finished task is left to purge")
            break
        task_id, state, finished = following
        if not _purge_one(
            sessions, report, files_of(task_id), state, finished, "disk", now, actor, source
        ):
            break  # could not claim it (changed meanwhile): try again at the next run
    if report.tasks:
        log.info("retention: %s", report.summary())
    return report


def _purge_one(
    sessions: sessionmaker[Session],
    report: PurgeReport,
    files: TaskFiles,
    state: str,
    finished: datetime,
    reason: str,
    now: datetime,
    actor: str,
    source: str,
) -> bool:
    if report.dry_run:
        with unit_of_work(sessions) as session:
            found = measure(files.paths(session=session))
    else:
        with unit_of_work(sessions) as session:
            paths = claim(files, now=now, session=session)
            if paths is None:
                return False
            # Measured inside the claim's transaction, so the audit event carries the amounts.
            found = measure(paths)
            audit.record(
                "retention.purge",
                session=session,
                actor=actor,
                source=source,
                target=f"task {files.task_id}",
                detail={
                    "reason": reason,
                    "state": state,
                    "files": found.files,
                    "bytes": found.bytes,
                },
                at=now,
            )
        found = remove(paths)
    report.tasks.append(
        PurgedTask(
            task_id=files.task_id,
            state=state,
            finished=finished,
            reason=reason,
            files=found.files,
            bytes=found.bytes,
        )
    )
    return True
