"""What the metrics gauges show (issue 10), read from the database and the disk.

Pure: the MetricsActor (actors/metrics.py) sets Ray gauges from a :class:`GaugeSnapshot`
every few seconds, and a test can check the numbers without Ray or Prometheus.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from petray.db.models import Task
from petray.domain import FINAL_STATES, State


@dataclass(frozen=True)
class GaugeSnapshot:
    # (stage, state) -> tasks; every task the database holds, finished ones included.
    tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    # Age of the oldest task still on its way (active or waiting), 0 when there is none.
    oldest_open_task_s: float = 0.0
    # Age of the oldest task waiting for a retry (a transient failure), 0 when there is none.
    oldest_waiting_task_s: float = 0.0
    free_disk_bytes: int = 0


def _as_utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; petray stores UTC everywhere.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _age(oldest: datetime | None, now: datetime) -> float:
    return max(0.0, (now - _as_utc(oldest)).total_seconds()) if oldest is not None else 0.0


def take_snapshot(home: Path, *, session: Session, now: datetime | None = None) -> GaugeSnapshot:
    now = now or datetime.now(UTC)
    rows = session.execute(
        select(Task.stage, Task.state, func.count()).group_by(Task.stage, Task.state)
    ).all()
    final = [str(state) for state in FINAL_STATES]
    oldest_open = session.scalar(select(func.min(Task.created)).where(Task.state.not_in(final)))
    oldest_waiting = session.scalar(
        select(func.min(Task.created)).where(Task.state == str(State.WAITING))
    )
    try:
        free = shutil.disk_usage(home).free
    except OSError:
        free = 0
    return GaugeSnapshot(
        tasks={(stage, state): count for stage, state, count in rows},
        oldest_open_task_s=_age(oldest_open, now),
        oldest_waiting_task_s=_age(oldest_waiting, now),
        free_disk_bytes=free,
    )
