"""Per-stage durations of a task, from its recorded stage transitions."""

from __future__ import annotations

from itertools import pairwise

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import TaskEvent


def stage_timings(task_id: str, *, session: Session) -> list[tuple[str, float]]:
    """(stage, seconds) in pipeline order: from entering a stage until entering the next one."""
    events = session.scalars(
        select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)
    ).all()
    entered: list[tuple[str, float]] = []
    for event in events:
        if not entered or entered[-1][0] != event.stage:
            entered.append((event.stage, event.at.timestamp()))
    return [
        (stage, round(following - start, 3))
        for (stage, start), (_next, following) in pairwise(entered)
    ]
