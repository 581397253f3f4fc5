"""One unit of a stage's work on one task, and what follows from it (issue 14): the pure runner.

The rules every stage actor shares, with no Ray in them:

- a task that is no longer runnable in the stage (deleted, cancelled, failed, moved on) is left
  alone and its work is not done;
- the work is done outside any transaction; its outcome is committed in one, after taking the
  task's lock and checking again that nobody moved it meanwhile;
- success moves the task to the stage the handler names, or to the pipeline table's next one,
  and says which actor to tell (the caller tells it after the commit);
- a ``TransientError`` puts the task in ``waiting`` with the next attempt's time committed, or
  fails it with "gave up after N attempts" once the stage's budget is spent;
- a ``PermanentError`` fails the task with its reason; anything else fails it as an internal
  error naming the stage and the exception's type (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.domain import Stage, State
from petray.errors import PermanentError, TransientError
from petray.retry import RetryPolicy
from petray.stages.pipeline import next_stage
from petray.tasks import RUNNABLE_STATES, fail, get_task, move_to, record_transient_failure

logger = logging.getLogger(__name__)

# The stage's work on one task id: where the task goes next, or None for the table's next stage.
Handler = Callable[[str], Stage | None]
# Commits the move to the target stage (a stage may record more in the same transaction).
Advance = Callable[[Task, Stage, Session], None]


@dataclass(frozen=True)
class Outcome:
    # Committed in this stage: tell the actor of this stage.
    advance_to: Stage | None = None
    # Waiting after a transient failure: run again after this many seconds.
    retry_in: float | None = None
    # The task failed here (permanently, or out of its retry budget).
    failed: bool = False


def advance(task: Task, target: Stage, session: Session) -> None:
    """The default commit: the next stage, active (done at the end)."""
    state = State.DONE if target == Stage.DONE else State.ACTIVE
    move_to(task, target, session=session, state=state)


def runnable_here(task: Task | None, stage: Stage) -> bool:
    return task is not None and task.stage == stage.value and task.state in RUNNABLE_STATES


def run_once(
    task_id: str,
    *,
    stage: Stage,
    handle: Handler,
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
    on_advance: Advance = advance,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    """Run ``handle`` for ``task_id`` in ``stage`` and commit what came of it."""
    with unit_of_work(sessions) as session:
        if not runnable_here(session.get(Task, task_id), stage):
            return Outcome()  # stale: deleted, cancelled, failed, or moved on already
    try:
        target = handle(task_id) or next_stage(stage)
    except TransientError as exc:
        return _retry_later(task_id, stage, str(exc), sessions=sessions, policy=policy, now=now)
    except PermanentError as exc:
        return _fail(task_id, stage, str(exc), sessions=sessions)
    except Exception as exc:
        logger.exception("task %s failed in %s", task_id, stage)
        reason = f"internal error in {stage}: {type(exc).__name__}"
        return _fail(task_id, stage, reason, sessions=sessions)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        if not runnable_here(task, stage):
            # Cancelled while the work ran, or moved on (a result callback that overtook the
            # Uploader's own commit).
            return Outcome()
        on_advance(task, target, session)
    return Outcome(advance_to=target)


def _retry_later(
    task_id: str,
    stage: Stage,
    error: str,
    *,
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
    now: Callable[[], datetime],
) -> Outcome:
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        if not runnable_here(task, stage):
            return Outcome()
        delay = record_transient_failure(task, error, policy=policy, now=now(), session=session)
        attempts = task.retry_attempts
    if delay is None:
        logger.warning("task %s %s: gave up after %d attempts", task_id, stage, attempts)
        return Outcome(failed=True)
    logger.warning("task %s %s: %s (retry in %.1f s)", task_id, stage, error, delay)
    return Outcome(retry_in=delay)


def _fail(task_id: str, stage: Stage, reason: str, *, sessions: sessionmaker[Session]) -> Outcome:
    logger.warning("task %s failed in %s: %s", task_id, stage, reason)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        if task.state in RUNNABLE_STATES:
            fail(task, reason, session=session)
    return Outcome(failed=True)
