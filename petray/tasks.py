"""Task lifecycle: creation, stage transitions, failures, retries and listings.

Data-access functions take ``*, session`` and never commit: the actor method or request
handler that calls them owns the unit of work, and commits before telling the next stage.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from petray.db.models import (
    Instance,
    SentInstance,
    Series,
    Study,
    Task,
    TaskEvent,
)
from petray.domain import FINAL_STATES, Stage, State
from petray.errors import InvalidTransition, UnknownTask
from petray.retry import RetryPolicy, format_duration
from petray.stages.pipeline import RESUMABLE_STAGES
from petray.stages.records import Quant
from petray.task_files import TaskFiles, recorded_paths

# States a task is taken up in by its stage's actor (or retried from).
RUNNABLE_STATES = (State.ACTIVE.value, State.WAITING.value)

# States whose event message is also the task's reason (what the console shows).
REASONED_STATES = frozenset({State.WAITING, State.FAILED, State.CANCELLED, State.HELD})


# Touches no column (``updated`` keeps its value): it exists to take SQLite's write lock.
_SQLITE_WRITE_LOCK = text(f"UPDATE {Task.__tablename__} SET id = id WHERE id = :id")


def new_task_id() -> str:
    return uuid.uuid4().hex


def create_task(
    *, session: Session, series_pk: int, calling_ae: str, peer_host: str, expected: int | None
) -> Task:
    task = Task(
        id=new_task_id(),
        series_pk=series_pk,
        calling_ae=calling_ae,
        peer_host=peer_host,
        stage=Stage.COMPILING,
        state=State.ACTIVE,
        expected_images=expected,
        details={},
    )
    session.add(task)
    session.add(TaskEvent(task_id=task.id, stage=task.stage, state=task.state))
    return task


def get_task(task_id: str, *, session: Session, lock: bool = False) -> Task:
    """The task; ``lock`` holds it against other writers until the caller's commit.

    PostgreSQL takes the row lock with SELECT ... FOR UPDATE. SQLite ignores FOR UPDATE and
    reads outside any transaction, so a change committed between this read and the caller's
    write would be overwritten (a fast service's callback lost under the Uploader's "waiting
    for the result"). There a no-op UPDATE of the row comes first: it opens the transaction
    and takes the database's write lock, so the read sees every earlier commit and no other
    writer commits before ours.
    """
    if lock and session.get_bind().dialect.name == "sqlite":
        session.execute(_SQLITE_WRITE_LOCK, {"id": task_id})
    stmt = select(Task).where(Task.id == task_id)
    if lock:
        stmt = stmt.with_for_update()
    task = session.scalars(stmt).one_or_none()
    if task is None:
        raise UnknownTask(f"unknown task {task_id}")
    return task


def move_to(
    task: Task, stage: Stage, *, session: Session, state: State = State.ACTIVE, message: str = ""
) -> None:
    """Record a stage/state change and its event; ``reason`` is cleared unless waiting or failed.

    Moving to another stage ends the current run of transient failures (a fresh budget there).
    """
    if task.stage != stage:
        _clear_retries(task)
    task.stage = stage
    task.state = state
    task.reason = message if state in REASONED_STATES else ""
    task.updated = datetime.now(UTC)
    session.add(TaskEvent(task_id=task.id, stage=stage, state=state, message=message))


def fail(task: Task, reason: str, *, session: Session) -> None:
    move_to(task, Stage(task.stage), session=session, state=State.FAILED, message=reason)


def wait(task: Task, reason: str, *, session: Session) -> None:
    """Keep the task in its stage while something outside petray is away (it resumes by itself)."""
    if task.state != State.WAITING or task.reason != reason:
        move_to(task, Stage(task.stage), session=session, state=State.WAITING, message=reason)


def add_note(task: Task, note: str) -> None:
    """Remember something staff should know that did not stop the task (once per note)."""
    notes = [line for line in (task.notes or "").splitlines() if line]
    if note not in notes:
        task.notes = "\n".join([*notes, note])


def _clear_retries(task: Task) -> None:
    task.retry_attempts = 0
    task.retrying_since = None
    task.next_attempt_at = None


def record_transient_failure(
    task: Task, error: str, *, policy: RetryPolicy, now: datetime, session: Session
) -> float | None:
    """Count one transient failure: wait and return the delay, or fail once out of budget.

    The count, the start of the run and the next attempt's time are committed with the task, so
    an actor that restarts re-arms the retry at the same moment instead of starting over.
    """
    since = task.retrying_since or now
    failures = (task.retry_attempts or 0) + 1
    elapsed = (now - since).total_seconds()
    task.retry_attempts = failures
    task.retrying_since = since
    task.last_error = error
    delay = policy.next_delay(failures=failures, elapsed_s=elapsed)
    if delay is None:
        task.next_attempt_at = None
        fail(
            task,
            f"gave up after {failures} attempts over {format_duration(elapsed)}: {error}",
            session=session,
        )
        return None
    task.next_attempt_at = now + timedelta(seconds=delay)
    wait(task, f"{error} (attempt {failures}, retrying)", session=session)
    return delay


def complete(task: Task, *, session: Session) -> None:
    move_to(task, Stage.DONE, session=session, state=State.DONE)


def unfinished_tasks(*, session: Session) -> list[tuple[str, Stage]]:
    """Tasks an actor must (re)start on: active or waiting in a stage that an actor owns."""
    rows = session.execute(
        select(Task.id, Task.stage)
        .where(Task.stage.in_([s.value for s in RESUMABLE_STAGES]))
        .where(Task.state.in_(RUNNABLE_STATES))
        .order_by(Task.created)
    ).all()
    return [(task_id, Stage(stage)) for task_id, stage in rows]


def runnable_in(
    stages: tuple[Stage, ...], *, session: Session
) -> list[tuple[str, datetime | None]]:
    """(task id, next attempt time) of tasks active or waiting in ``stages``, oldest first.

    What a stage actor takes up whenever it (re)starts (issue 8: every actor heals itself).
    """
    rows = session.execute(
        select(Task.id, Task.next_attempt_at)
        .where(Task.stage.in_([s.value for s in stages]))
        .where(Task.state.in_(RUNNABLE_STATES))
        .order_by(Task.created)
    ).all()
    return [(task_id, next_at) for task_id, next_at in rows]


def awaiting_result(*, session: Session) -> list[str]:
    """Ids of tasks the service may have answered: uploaded, not yet told of a result."""
    return list(
        session.scalars(
            select(Task.id)
            .where(Task.stage.in_([Stage.UPLOADING.value, Stage.PROCESSING.value]))
            .where(Task.state.in_(RUNNABLE_STATES))
            .order_by(Task.created)
        )
    )


def accept_result_callback(task_id: str, *, session: Session) -> bool:
    """Handle ``POST /process_ready``: True when the download must start, False for a repeat.

    Raises UnknownTask (404) or InvalidTransition (409) as REMOTE_PROTOCOL.md requires.
    """
    task = get_task(task_id, session=session, lock=True)
    stage, state = Stage(task.stage), State(task.state)
    # A fast service can call back before the Uploader has committed the move to processing
    # (its POST /processing has returned, its commit has not): the result is there all the same.
    awaiting = {Stage.UPLOADING, Stage.PROCESSING}
    if stage in awaiting and state in (State.ACTIVE, State.WAITING):
        move_to(task, Stage.DOWNLOADING, session=session)
        return True
    already_past = {Stage.DOWNLOADING, Stage.UNPACKING, Stage.SENDING, Stage.DONE}
    if stage in already_past and state not in (State.FAILED, State.CANCELLED):
        return False
    raise InvalidTransition(f"task {task_id} is not waiting for a result ({stage}, {state})")


def retry(task_id: str, *, session: Session, from_start: bool = False) -> Stage:
    """Put a failed or cancelled task back to work; returns the stage it restarts in."""
    task = get_task(task_id, session=session, lock=True)
    if task.files_purged_at is not None:
        raise InvalidTransition(
            f"task {task_id}'s files were removed by retention; resend the series"
        )
    if State(task.state) not in (State.FAILED, State.CANCELLED) and not from_start:
        raise InvalidTransition(f"task {task_id} is {task.state}; only failed tasks are retried")
    if Stage(task.stage) == Stage.COMPILING:
        raise InvalidTransition(f"task {task_id} never finished compiling; resend the series")
    stage = Stage.VALIDATING if from_start else Stage(task.stage)
    if stage == Stage.PROCESSING:
        # The service's answer was lost or late: upload again (the service is idempotent).
        stage = Stage.UPLOADING
    if stage == Stage.DONE:
        stage = Stage.SENDING
    quant = Quant.find(task.details)
    if stage == Stage.SENDING and quant is not None and quant.check.status == "rejected":
        # Rejected after review: its series are not sent on a retry; they are made and
        # checked again (with the thresholds of now).
        stage = Stage.UNPACKING
    task.attempts += 1
    task.deadline = None
    _clear_retries(task)
    if from_start:
        # A new result is made: every destination gets all of it again.
        for destination in task.destinations:
            destination.state, destination.sent, destination.reason = "waiting", 0, ""
        session.execute(
            delete(SentInstance).where(
                SentInstance.destination_pk.in_([d.id for d in task.destinations])
            )
        )
    move_to(task, stage, session=session, message="retry from start" if from_start else "retry")
    return stage


def cancel(task_id: str, *, session: Session) -> None:
    task = get_task(task_id, session=session, lock=True)
    if State(task.state) in FINAL_STATES:
        raise InvalidTransition(f"task {task_id} is already {task.state}")
    move_to(task, Stage(task.stage), session=session, state=State.CANCELLED, message="cancelled")


def delete_task(task_id: str, *, session: Session, files: TaskFiles | None = None) -> list[Path]:
    """Delete a task and its received instances; returns every file of the task to remove.

    With ``files`` (the task's ``TaskFiles``) the list holds all of them (instances, outputs,
    work and shared-folder archives, previews); without, only those that rows name. The caller
    removes them (``petray.site.activity.remove_files``) only after the deletion is committed, so a
    rollback never leaves rows pointing at missing files.
    """
    task = session.get(Task, task_id)
    if task is None:
        raise UnknownTask(f"unknown task {task_id}")
    paths = files.paths(session=session) if files else recorded_paths(task_id, session=session)
    session.execute(delete(Instance).where(Instance.task_id == task_id))
    session.delete(task)
    return paths


@dataclass(frozen=True)
class TaskSummary:
    id: str
    stage: str
    state: str
    images: int
    expected_images: int | None
    series_instance_uid: str
    study_instance_uid: str
    calling_ae: str
    reason: str
    created: str
    updated: str
    destinations: list[dict[str, Any]]
    # Automatic retries of the current stage (issue 8): how many, the last error, when next.
    retry_attempts: int = 0
    last_error: str = ""
    next_attempt_at: str | None = None
    operator_retries: int = 0
    notes: str = ""
    # The quantitative check (issue 15, petray.stages.review): metrics, changes and its verdict.
    quant: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(task: Task) -> TaskSummary:
    return TaskSummary(
        id=task.id,
        stage=task.stage,
        state=task.state,
        images=task.images,
        expected_images=task.expected_images,
        series_instance_uid=task.series.series_instance_uid,
        study_instance_uid=task.series.study.study_instance_uid,
        calling_ae=task.calling_ae,
        reason=task.reason,
        created=task.created.isoformat(),
        updated=task.updated.isoformat(),
        retry_attempts=task.retry_attempts or 0,
        last_error=task.last_error or "",
        next_attempt_at=task.next_attempt_at.isoformat() if task.next_attempt_at else None,
        operator_retries=task.attempts or 0,
        notes=task.notes or "",
        quant=quant.public() if (quant := Quant.find(task.details)) else None,
        destinations=[
            {
                "name": d.name,
                "ae_title": d.ae_title,
                "state": d.state,
                "sent": d.sent,
                "total": d.total,
                "reason": d.reason,
            }
            for d in task.destinations
        ],
    )


def list_tasks(*, session: Session, limit: int = 200, offset: int = 0) -> list[TaskSummary]:
    tasks = session.scalars(
        select(Task)
        .join(Series)
        .join(Study)
        .order_by(Task.created.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return [summarize(t) for t in tasks]


def instance_paths(task_id: str, *, session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Instance.path).where(Instance.task_id == task_id).order_by(Instance.id)
        )
    )
