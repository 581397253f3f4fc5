"""The pure stage runner (issue 14): commit, retry, fail and dispatch rules, without Ray."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.errors import PermanentError, TransientError
from petray.retry import Backoff, RetryPolicy
from petray.stages.runner import Handler, Outcome, run_once
from petray.tasks import cancel, get_task

POLICY = RetryPolicy(backoff=Backoff(base_s=1.0, cap_s=4.0, jitter=0.0), budget_s=10.0)
T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def new_task(sessions: sessionmaker[Session], stage: Stage) -> str:
    with unit_of_work(sessions) as session:
        return add_task(session, stage=stage, state=State.ACTIVE)


def state_of(sessions: sessionmaker[Session], task_id: str) -> tuple[str, str, str]:
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        return task.stage, task.state, task.reason


def run(
    sessions: sessionmaker[Session], task_id: str, stage: Stage, handle: Handler, **kw: Any
) -> Outcome:
    return run_once(task_id, stage=stage, handle=handle, sessions=sessions, policy=POLICY, **kw)


def test_success_commits_the_tables_next_stage_and_names_it(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    task_id = new_task(sqlite_sessions, Stage.VALIDATING)
    outcome = run(sqlite_sessions, task_id, Stage.VALIDATING, lambda _id: None)
    assert outcome == Outcome(advance_to=Stage.PACKING)
    assert state_of(sqlite_sessions, task_id)[:2] == ("packing", "active")


def test_the_last_stage_finishes_the_task(sqlite_sessions: sessionmaker[Session]) -> None:
    task_id = new_task(sqlite_sessions, Stage.SENDING)
    assert run(sqlite_sessions, task_id, Stage.SENDING, lambda _id: None).advance_to == Stage.DONE
    assert state_of(sqlite_sessions, task_id)[:2] == ("done", "done")


def test_a_handler_may_send_the_task_elsewhere(sqlite_sessions: sessionmaker[Session]) -> None:
    task_id = new_task(sqlite_sessions, Stage.UNPACKING)
    outcome = run(sqlite_sessions, task_id, Stage.UNPACKING, lambda _id: Stage.DONE)
    assert outcome.advance_to == Stage.DONE


def test_a_stale_task_is_not_worked_on(sqlite_sessions: sessionmaker[Session]) -> None:
    task_id = new_task(sqlite_sessions, Stage.PACKING)
    calls: list[str] = []
    assert run(sqlite_sessions, task_id, Stage.VALIDATING, calls.append) == Outcome()
    assert run(sqlite_sessions, "0" * 32, Stage.PACKING, calls.append) == Outcome()
    assert calls == []


def test_a_task_cancelled_while_the_work_ran_is_not_moved_on(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    task_id = new_task(sqlite_sessions, Stage.PACKING)

    def cancelled_meanwhile(tid: str) -> None:
        with unit_of_work(sqlite_sessions) as session:
            cancel(tid, session=session)

    outcome = run(sqlite_sessions, task_id, Stage.PACKING, cancelled_meanwhile)
    assert outcome == Outcome()
    assert state_of(sqlite_sessions, task_id)[:2] == ("packing", "cancelled")


def test_a_transient_failure_waits_then_gives_up_at_the_end_of_the_budget(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    task_id = new_task(sqlite_sessions, Stage.UPLOADING)

    def share_away(_id: str) -> None:
        raise TransientError("shared folder not writable")

    clock = [T0]
    outcome = run(sqlite_sessions, task_id, Stage.UPLOADING, share_away, now=lambda: clock[0])
    assert outcome.retry_in == pytest.approx(1.0) and not outcome.failed
    stage, state, reason = state_of(sqlite_sessions, task_id)
    assert (stage, state) == ("uploading", "waiting")
    assert reason == "shared folder not writable (attempt 1, retrying)"
    clock[0] = T0 + timedelta(seconds=11)  # past the 10 s budget
    outcome = run(sqlite_sessions, task_id, Stage.UPLOADING, share_away, now=lambda: clock[0])
    assert outcome == Outcome(failed=True)
    stage, state, reason = state_of(sqlite_sessions, task_id)
    assert (stage, state) == ("uploading", "failed")
    assert reason.startswith("gave up after 2 attempts over 11 s: shared folder not writable")


def test_a_permanent_failure_fails_with_its_reason(sqlite_sessions: sessionmaker[Session]) -> None:
    task_id = new_task(sqlite_sessions, Stage.VALIDATING)

    def unlicensed(_id: str) -> None:
        raise PermanentError("model not licensed for this site")

    assert run(sqlite_sessions, task_id, Stage.VALIDATING, unlicensed).failed
    assert state_of(sqlite_sessions, task_id) == (
        "validating",
        "failed",
        "model not licensed for this site",
    )


def test_an_unexpected_error_fails_as_internal_naming_stage_and_type(
    sqlite_sessions: sessionmaker[Session],
) -> None:
    task_id = new_task(sqlite_sessions, Stage.PACKING)

    def broken(_id: str) -> None:
        raise KeyError("slice_paths")

    assert run(sqlite_sessions, task_id, Stage.PACKING, broken).failed
    assert state_of(sqlite_sessions, task_id)[1:] == (
        "failed",
        "internal error in packing: KeyError",
    )


def test_a_stage_records_more_in_the_commit(sqlite_sessions: sessionmaker[Session]) -> None:
    task_id = new_task(sqlite_sessions, Stage.UPLOADING)

    def waiting_for_the_result(task: Task, target: Stage, session: Session) -> None:
        task.notes = "uploaded"
        task.stage, task.state = target.value, State.WAITING.value

    outcome = run(
        sqlite_sessions,
        task_id,
        Stage.UPLOADING,
        lambda _id: None,
        on_advance=waiting_for_the_result,
    )
    assert outcome.advance_to == Stage.PROCESSING
    with unit_of_work(sqlite_sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.notes) == ("processing", "waiting", "uploaded")
