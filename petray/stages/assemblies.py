"""Persistence of series assemblies: what the Compilator commits, and how it rebuilds on start."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from statistics import median

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from petray.db.models import Instance, Task
from petray.dicom.ingest import ReceivedInstance
from petray.domain import FINAL_STATES, Stage, State
from petray.imaging.decay import RecordedDecay
from petray.site.siteconfig import get_site_config
from petray.stages.compilator import CompilatorConfig, SeriesAssembly
from petray.tasks import add_note, create_task, fail, move_to

# A task dispatched on its NumberOfSlices can still take the rest of its series back while it
# has not left the gateway: nothing of it has reached the service yet.
REOPENABLE_STAGES = (Stage.VALIDATING, Stage.PACKING)


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
    # Not synchronised with the session: the batch's rows were inserted by the Store SCP and
    # never loaded here, and evaluating the identity map per batch cost more than the update.
    session.execute(
        update(Instance)
        .where(Instance.id.in_(list(instance_pks)))
        .values(task_id=assembly.task_id),
        execution_options={"synchronize_session": False},
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
            declared=task.expected_images,
        )
        for row in rows:
            assembly.sop_uids.add(row.sop_instance_uid)
            assembly.positions.append(row.slice_position)
        assemblies.append(assembly)
    return assemblies, unassigned(session=session)


def unassigned(
    *, session: Session, received_before: datetime | None = None
) -> list[ReceivedInstance]:
    """Stored instances no task has claimed, in the order they were received."""
    stmt = select(Instance).where(Instance.task_id.is_(None)).order_by(Instance.id)
    if received_before is not None:
        stmt = stmt.where(Instance.received < received_before)
    return [
        ReceivedInstance(
            instance_pk=row.id,
            series_pk=row.series_pk,
            sop_instance_uid=row.sop_instance_uid,
            slice_position=row.slice_position,
            number_of_slices=row.number_of_slices,
            calling_ae=row.calling_ae,
            peer_host=row.peer_host,
            path=row.path,
        )
        for row in session.scalars(stmt)
    ]


def still_unassigned(
    instances: Sequence[ReceivedInstance], *, session: Session
) -> list[ReceivedInstance]:
    """The instances, once each, whose row exists and no task has claimed yet.

    An instance reaches the Compilator twice when it is both restored from the database and
    still in flight as a message; only the database can tell which copy came first. The SOP
    Instance UID must match too: SQLite hands a deleted row's id to the next insert, so a
    message about a deleted instance could otherwise claim a newer instance's row (issue 8).
    """
    if not instances:
        return []
    open_rows = dict(
        session.execute(
            select(Instance.id, Instance.sop_instance_uid)
            .where(Instance.id.in_({i.instance_pk for i in instances}))
            .where(Instance.task_id.is_(None))
        ).all()
    )
    kept: list[ReceivedInstance] = []
    for instance in instances:
        if open_rows.pop(instance.instance_pk, None) == instance.sop_instance_uid:
            kept.append(instance)
    return kept


def compiling(task_ids: Collection[str], *, session: Session) -> set[str]:
    """Those of ``task_ids`` whose task still exists and is compiling (not cancelled/deleted)."""
    if not task_ids:
        return set()
    return set(
        session.scalars(
            select(Task.id)
            .where(Task.id.in_(list(task_ids)))
            .where(Task.stage == Stage.COMPILING.value, Task.state == State.ACTIVE.value)
        )
    )


def reopen_or_fail(task_id: str, note: str, *, session: Session) -> bool:
    """More slices of a task dispatched on its NumberOfSlices arrived (issue 8).

    While the task has not left the gateway it goes back to compiling and takes them (True);
    later, the task fails with ``note`` rather than deliver half a volume (False), and the
    caller fails the rest too. A finished task is left as it is (False).
    """
    task = session.get(Task, task_id, with_for_update=True)
    if task is None or State(task.state) in FINAL_STATES:
        return False
    if Stage(task.stage) in REOPENABLE_STAGES:
        move_to(task, Stage.COMPILING, session=session, message=note)
        task.expected_images = None
        add_note(task, note)
        return True
    fail(task, note, session=session)
    return False


def slice_spacing_mm(task_id: str, *, session: Session) -> float:
    """Median distance between neighbouring slices of the task, 0 when it has one slice."""
    positions = sorted(
        session.scalars(select(Instance.slice_position).where(Instance.task_id == task_id))
    )
    steps = [b - a for a, b in pairwise(positions)]
    return float(median(steps)) if steps else 0.0


def instance_decays(task_id: str, *, session: Session) -> list[RecordedDecay]:
    """The task's slices' decay values as ingest recorded them, in ``instance_paths`` order."""
    rows = session.execute(
        select(
            Instance.path,
            Instance.decay_recorded,
            Instance.decay_factor,
            Instance.frame_reference_time,
        )
        .where(Instance.task_id == task_id)
        .order_by(Instance.id)
    )
    return [
        RecordedDecay(Path(path), bool(recorded), factor, ms) for path, recorded, factor, ms in rows
    ]
