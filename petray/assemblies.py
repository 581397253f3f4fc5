"""Persistence of series assemblies: what the Compilator commits, and how it rebuilds on start."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from statistics import median

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from petray.compilator import CompilatorConfig, SeriesAssembly
from petray.db.models import Instance, Task
from petray.domain import Stage, State
from petray.ingest import ReceivedInstance
from petray.siteconfig import get_site_config
from petray.tasks import create_task


def load_config(*, session: Session) -> CompilatorConfig:
    config = get_site_config(session=session)
    return CompilatorConfig(
        min_images=config.min_images,
        slice_gap_tolerance=config.slice_gap_tolerance,
        inactivity_wait_s=config.inactivity_wait_s,
        abort_timeout_s=config.abort_timeout_s,
    )


def open_task(instance: ReceivedInstance, *, session: Session, now: float) -> SeriesAssembly:
    task = create_task(
        session=session,
        series_pk=instance.series_pk,
        calling_ae=instance.calling_ae,
        peer_host=instance.peer_host,
        expected=instance.number_of_slices,
    )
    return SeriesAssembly(
        task_id=task.id,
        series_pk=instance.series_pk,
        calling_ae=instance.calling_ae,
        peer_host=instance.peer_host,
        last_activity=now,
    )


def assign(instance_pks: Sequence[int], assembly: SeriesAssembly, *, session: Session) -> None:
    """Give stored instances to the assembly's task, in two statements however many there are.

    The Compilator commits a batch at a time while holding SQLite's one write lock, which the
    Store SCP needs for every instance: two statements per task keep that hold short.
    """
    session.execute(
        update(Instance).where(Instance.id.in_(list(instance_pks))).values(task_id=assembly.task_id)
    )
    session.execute(
        update(Task)
        .where(Task.id == assembly.task_id)
        .values(images=assembly.images, expected_images=assembly.expected)
    )


def restore(*, session: Session) -> tuple[list[SeriesAssembly], list[ReceivedInstance]]:
    """Open assemblies of tasks still compiling, and stored instances no task has claimed yet.

    Both come back in the order they were received so that routing repeats its decisions.
    """
    assemblies: list[SeriesAssembly] = []
    open_tasks = session.scalars(
        select(Task)
        .where(Task.stage == Stage.COMPILING.value, Task.state == State.ACTIVE.value)
        .order_by(Task.created)
    ).all()
    for task in open_tasks:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.slice_position, Instance.received)
            .where(Instance.task_id == task.id)
            .order_by(Instance.id)
        ).all()
        # Aware UTC on every database (models.UTCDateTime), so .timestamp() is not local time.
        last = max((r.received for r in rows), default=task.created)
        assembly = SeriesAssembly(
            task_id=task.id,
            series_pk=task.series_pk,
            calling_ae=task.calling_ae,
            peer_host=task.peer_host,
            last_activity=last.timestamp(),
            expected=task.expected_images,
        )
        for row in rows:
            assembly.sop_uids.add(row.sop_instance_uid)
            assembly.positions.append(row.slice_position)
        assemblies.append(assembly)
    pending = [
        ReceivedInstance(
            instance_pk=row.id,
            series_pk=row.series_pk,
            sop_instance_uid=row.sop_instance_uid,
            slice_position=row.slice_position,
            number_of_slices=row.number_of_slices,
            calling_ae=row.calling_ae,
            peer_host=row.peer_host,
        )
        for row in session.scalars(
            select(Instance).where(Instance.task_id.is_(None)).order_by(Instance.id)
        )
    ]
    return assemblies, pending


def slice_spacing_mm(task_id: str, *, session: Session) -> float:
    """Median distance between neighbouring slices of the task, 0 when it has one slice."""
    positions = sorted(
        session.scalars(select(Instance.slice_position).where(Instance.task_id == task_id))
    )
    steps = [b - a for a, b in pairwise(positions)]
    return float(median(steps)) if steps else 0.0
