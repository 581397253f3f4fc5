"""Task lifecycle on both databases: transitions, events, callbacks, retry, cancel, listings."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import (
    Instance,
    Patient,
    SentInstance,
    Series,
    Study,
    Task,
    TaskDestination,
    TaskEvent,
)
from petray.domain import Stage, State
from petray.errors import InvalidTransition, UnknownTask
from petray.retry import Backoff, RetryPolicy
from petray.tasks import (
    accept_result_callback,
    awaiting_result,
    cancel,
    complete,
    create_task,
    fail,
    get_task,
    instance_paths,
    list_tasks,
    move_to,
    record_transient_failure,
    retry,
    runnable_in,
    summarize,
    unfinished_tasks,
    wait,
)

SUMMARY_KEYS = {
    "id",
    "stage",
    "state",
    "images",
    "expected_images",
    "series_instance_uid",
    "reason",
    "created",
    "updated",
}
_serial = count(1)


def add_series(session: Session) -> Series:
    """A patient/study/series hierarchy with unique UIDs."""
    n = next(_serial)
    patient = Patient(patient_id=f"P{n}")
    study = Study(study_instance_uid=f"1.2.826.0.1.{n}", patient=patient)
    series = Series(series_instance_uid=f"1.2.826.0.1.{n}.1", study=study, modality="PT")
    session.add_all([patient, study, series])
    session.flush()
    return series


def make_task(
    session: Session,
    stage: Stage = Stage.COMPILING,
    state: State = State.ACTIVE,
    *,
    expected: int | None = 47,
    created: datetime | None = None,
) -> Task:
    series = add_series(session)
    task = create_task(
        session=session,
        series_pk=series.id,
        calling_ae="SCANNER",
        peer_host="127.0.0.1",
        expected=expected,
    )
    if created is not None:
        task.created = created
    if (stage, state) != (Stage.COMPILING, State.ACTIVE):
        move_to(task, stage, session=session, state=state, message=f"{stage} {state}")
    session.flush()
    return task


def as_utc(value: datetime) -> datetime:
    # SQLite keeps no zone; petray stores UTC only.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def events(session: Session, task_id: str) -> list[tuple[str, str, str]]:
    rows = session.execute(
        select(TaskEvent.stage, TaskEvent.state, TaskEvent.message)
        .where(TaskEvent.task_id == task_id)
        .order_by(TaskEvent.id)
    ).all()
    return [(r.stage, r.state, r.message) for r in rows]


def test_create_task_starts_compiling_with_one_event(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, expected=12)
        task_id = task.id
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == (Stage.COMPILING, State.ACTIVE)
        assert task.expected_images == 12
        assert task.images == 0
        assert task.calling_ae == "SCANNER"
        assert len(task_id) == 32 and int(task_id, 16) >= 0
        assert events(session, task_id) == [("compiling", "active", "")]


def test_task_ids_are_unique(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        ids = {make_task(session).id for _ in range(5)}
    assert len(ids) == 5


def test_get_task_of_unknown_id_raises(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, pytest.raises(UnknownTask):
        get_task("0" * 32, session=session)


def test_move_to_records_each_transition_in_order(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        move_to(task, Stage.VALIDATING, session=session)
        wait(task, "remote service unreachable", session=session)
        move_to(task, Stage.PACKING, session=session)
        task_id = task.id
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.reason) == ("packing", "active", "")
        assert events(session, task_id) == [
            ("compiling", "active", ""),
            ("validating", "active", ""),
            ("validating", "waiting", "remote service unreachable"),
            ("packing", "active", ""),
        ]


def test_moving_on_clears_the_reason_and_bumps_updated(sessions: sessionmaker[Session]) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.VALIDATING, State.WAITING)
        task.updated = long_ago
        session.flush()
        assert task.reason == "validating waiting"
        move_to(task, Stage.PACKING, session=session, message="ignored when active")
        assert task.reason == ""
        updated = task.updated
    assert updated > long_ago + timedelta(days=1)


def test_fail_keeps_the_stage_and_states_the_reason(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.PACKING)
        fail(task, "slice spacing is not uniform", session=session)
        task_id = task.id
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == ("packing", "failed")
        assert task.reason == "slice spacing is not uniform"
        assert events(session, task_id)[-1] == ("packing", "failed", "slice spacing is not uniform")


def test_wait_records_an_event_only_when_the_reason_changes(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.VALIDATING)
        wait(task, "service down", session=session)
        wait(task, "service down", session=session)
        wait(task, "service returned 503", session=session)
        task_id = task.id
    with sessions() as session:
        waits = [e for e in events(session, task_id) if e[1] == "waiting"]
        assert [m for _, _, m in waits] == ["service down", "service returned 503"]
        assert get_task(task_id, session=session).reason == "service returned 503"


def test_complete_moves_to_done(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.SENDING)
        complete(task, session=session)
        task_id = task.id
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.reason) == ("done", "done", "")
        assert events(session, task_id)[-1][:2] == ("done", "done")


def test_unfinished_tasks_are_active_or_waiting_in_actor_stages(
    sessions: sessionmaker[Session],
) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    expected: list[tuple[str, Stage]] = []
    with unit_of_work(sessions) as session:
        for minute, (stage, state) in enumerate(
            [
                (Stage.COMPILING, State.ACTIVE),  # the Compilator's own
                (Stage.VALIDATING, State.ACTIVE),
                (Stage.PACKING, State.FAILED),
                (Stage.UPLOADING, State.WAITING),
                (Stage.PROCESSING, State.WAITING),
                (Stage.DOWNLOADING, State.CANCELLED),
                (Stage.UNPACKING, State.ACTIVE),
                (Stage.SENDING, State.WAITING),
                (Stage.DONE, State.DONE),
            ]
        ):
            task = make_task(session, stage, state, created=start + timedelta(minutes=minute))
            if stage != Stage.COMPILING and state in (State.ACTIVE, State.WAITING):
                expected.append((task.id, stage))
    with sessions() as session:
        assert unfinished_tasks(session=session) == expected
    assert [stage for _, stage in expected] == [
        Stage.VALIDATING,
        Stage.UPLOADING,
        Stage.PROCESSING,
        Stage.UNPACKING,
        Stage.SENDING,
    ]


# --- POST /process_ready (REMOTE_PROTOCOL.md: 200 first time, 200 on repeat, 404, 409) ---


def test_result_callback_starts_the_download_once(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.PROCESSING, State.WAITING).id
    with unit_of_work(sessions) as session:
        assert accept_result_callback(task_id, session=session) is True
    with unit_of_work(sessions) as session:
        assert accept_result_callback(task_id, session=session) is False
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == ("downloading", "active")
        assert [e[0] for e in events(session, task_id)].count("downloading") == 1


def test_result_callback_that_overtakes_the_uploader_commit_is_accepted(
    sessions: sessionmaker[Session],
) -> None:
    # The service answered POST /processing and called back before the Uploader committed.
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.UPLOADING, State.ACTIVE).id
    with unit_of_work(sessions) as session:
        assert accept_result_callback(task_id, session=session) is True
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == ("downloading", "active")


def test_result_callback_during_the_uploader_commit_is_not_overwritten(
    sessions: sessionmaker[Session],
) -> None:
    # The Uploader has read its task (uploading) and is about to record "waiting for the
    # result" when the service's callback arrives. The callback must wait for that commit and
    # then move the task on; were it to commit in between, the Uploader's write would erase
    # it and the task would wait for a callback that has already come.
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.UPLOADING, State.ACTIVE).id
    uploader_read = threading.Event()
    callback_done = threading.Event()
    accepted: list[bool] = []

    def callback() -> None:
        uploader_read.wait(10)
        with unit_of_work(sessions) as session:
            accepted.append(accept_result_callback(task_id, session=session))
        callback_done.set()

    thread = threading.Thread(target=callback)
    thread.start()
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        assert task.stage == Stage.UPLOADING
        uploader_read.set()
        # Long enough for an unblocked callback to commit; a held lock keeps it waiting.
        overtaken = callback_done.wait(1.0)
        move_to(task, Stage.PROCESSING, session=session, state=State.WAITING, message="waiting")
    thread.join(30)
    assert not overtaken, "the callback committed while the Uploader held the task"
    assert accepted == [True]
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == ("downloading", "active")


AFTER_PROCESSING = [
    (Stage.DOWNLOADING, State.ACTIVE),
    (Stage.DOWNLOADING, State.WAITING),
    (Stage.UNPACKING, State.ACTIVE),
    (Stage.SENDING, State.WAITING),
    (Stage.DONE, State.DONE),
]
NOT_AWAITING_RESULT = [
    (Stage.VALIDATING, State.ACTIVE),
    (Stage.PACKING, State.ACTIVE),
    (Stage.PROCESSING, State.FAILED),
    (Stage.PROCESSING, State.CANCELLED),
    (Stage.SENDING, State.FAILED),
]


def test_result_callback_repeated_after_processing_is_harmless(
    sessions: sessionmaker[Session], subtests: pytest.Subtests
) -> None:
    # One database per test, several cases in it: a PostgreSQL schema costs ~0.3 s to build.
    with unit_of_work(sessions) as session:
        cases = [
            (make_task(session, stage, state).id, stage, state) for stage, state in AFTER_PROCESSING
        ]
    for task_id, stage, state in cases:
        with subtests.test(stage=stage, state=state), unit_of_work(sessions) as session:
            assert accept_result_callback(task_id, session=session) is False
            task = get_task(task_id, session=session)
            assert (task.stage, task.state) == (stage, state)


def test_result_callback_for_an_unknown_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session, pytest.raises(UnknownTask):
        accept_result_callback("f" * 32, session=session)


def test_result_callback_for_a_task_not_awaiting_one_conflicts(
    sessions: sessionmaker[Session], subtests: pytest.Subtests
) -> None:
    with unit_of_work(sessions) as session:
        cases = [
            (make_task(session, stage, state).id, stage, state)
            for stage, state in NOT_AWAITING_RESULT
        ]
    for task_id, stage, state in cases:
        with subtests.test(stage=stage, state=state):
            with unit_of_work(sessions) as session, pytest.raises(InvalidTransition):
                accept_result_callback(task_id, session=session)
            with sessions() as session:
                task = get_task(task_id, session=session)
                assert (task.stage, task.state) == (stage, state)


# --- retry and cancel ---

RETRY_STAGES = [
    (Stage.VALIDATING, Stage.VALIDATING),
    (Stage.PACKING, Stage.PACKING),
    (Stage.UPLOADING, Stage.UPLOADING),
    # The result never came: upload again rather than wait for a callback that is lost.
    (Stage.PROCESSING, Stage.UPLOADING),
    (Stage.DOWNLOADING, Stage.DOWNLOADING),
    (Stage.UNPACKING, Stage.UNPACKING),
    (Stage.SENDING, Stage.SENDING),
]


def test_retry_restarts_a_failed_task_in_its_stage(
    sessions: sessionmaker[Session], subtests: pytest.Subtests
) -> None:
    with unit_of_work(sessions) as session:
        cases = []
        for failed_in, restarts_in in RETRY_STAGES:
            task = make_task(session, failed_in, State.FAILED)
            task.deadline = datetime.now(UTC)
            cases.append((task.id, failed_in, restarts_in))
    for task_id, failed_in, restarts_in in cases:
        with subtests.test(failed_in=failed_in):
            with unit_of_work(sessions) as session:
                assert retry(task_id, session=session) == restarts_in
            with sessions() as session:
                task = get_task(task_id, session=session)
                assert (task.stage, task.state, task.reason) == (restarts_in, "active", "")
                assert task.attempts == 1
                assert task.deadline is None
                assert events(session, task_id)[-1] == (restarts_in, "active", "retry")
    with sessions() as session:
        # Every retried task is back where an actor picks it up after a restart.
        assert {t for t, _ in unfinished_tasks(session=session)} == {c[0] for c in cases}


def test_retry_puts_a_cancelled_task_back_to_work(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.PACKING).id
    with unit_of_work(sessions) as session:
        cancel(task_id, session=session)
    with unit_of_work(sessions) as session:
        assert retry(task_id, session=session) == Stage.PACKING


def test_retry_from_start_revalidates_and_resets_destinations(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.SENDING, State.FAILED)
        session.add(
            TaskDestination(
                task_id=task.id,
                name="pacs",
                ae_title="PACS",
                host="127.0.0.1",
                port=104,
                state="failed",
                sent=30,
                total=47,
                reason="association aborted",
            )
        )
        session.flush()
        session.add(
            SentInstance(destination_pk=task.destinations[0].id, sop_instance_uid="1.2.3.4.5")
        )
        task_id = task.id
    with unit_of_work(sessions) as session:
        assert retry(task_id, session=session, from_start=True) == Stage.VALIDATING
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == ("validating", "active")
        [destination] = task.destinations
        assert (destination.state, destination.sent, destination.reason) == ("waiting", 0, "")
        # A new result is made: its instances are all sent again.
        assert session.scalar(select(func.count()).select_from(SentInstance)) == 0
        assert events(session, task_id)[-1][2] == "retry from start"


def test_retry_from_start_also_restarts_a_finished_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.DONE, State.DONE).id
    with unit_of_work(sessions) as session:
        assert retry(task_id, session=session, from_start=True) == Stage.VALIDATING


def test_retry_refuses_a_task_that_has_not_failed(
    sessions: sessionmaker[Session], subtests: pytest.Subtests
) -> None:
    not_failed = [
        (Stage.PACKING, State.ACTIVE),
        (Stage.PROCESSING, State.WAITING),
        (Stage.DONE, State.DONE),
    ]
    with unit_of_work(sessions) as session:
        cases = [(make_task(session, stage, state).id, stage) for stage, state in not_failed]
    for task_id, stage in cases:
        with subtests.test(stage=stage):
            with (
                unit_of_work(sessions) as session,
                pytest.raises(InvalidTransition, match="only failed"),
            ):
                retry(task_id, session=session)
            with sessions() as session:
                task = get_task(task_id, session=session)
                assert (task.stage, task.attempts) == (stage, 0)


def test_retry_refuses_a_task_that_never_finished_compiling(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.COMPILING, State.FAILED).id
    for from_start in (False, True):
        with unit_of_work(sessions) as session, pytest.raises(InvalidTransition, match="resend"):
            retry(task_id, session=session, from_start=from_start)


def test_retry_of_an_unknown_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session, pytest.raises(UnknownTask):
        retry("a" * 32, session=session)


def test_cancel_stops_a_running_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.PROCESSING, State.WAITING).id
    with unit_of_work(sessions) as session:
        cancel(task_id, session=session)
    with sessions() as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.reason) == ("processing", "cancelled", "cancelled")
        assert unfinished_tasks(session=session) == []


def test_cancel_refuses_a_finished_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        ids = [
            make_task(session, Stage.SENDING, state).id
            for state in (State.FAILED, State.DONE, State.CANCELLED)
        ]
    for task_id in ids:
        with unit_of_work(sessions) as session, pytest.raises(InvalidTransition, match="already"):
            cancel(task_id, session=session)


# --- listings ---


def test_list_tasks_newest_first_with_json_fields(sessions: sessionmaker[Session]) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        older = make_task(session, Stage.VALIDATING, created=start, expected=None)
        newer = make_task(session, Stage.PACKING, State.FAILED, created=start + timedelta(hours=1))
        newer.images = 46
        ids = [newer.id, older.id]
        series_uid = newer.series.series_instance_uid
    with sessions() as session:
        summaries = list_tasks(session=session)
        assert [s.id for s in summaries] == ids
        rows = json.loads(json.dumps([s.as_dict() for s in summaries]))
        assert set(rows[0]) >= SUMMARY_KEYS
        first = rows[0]
        assert (first["stage"], first["state"]) == ("packing", "failed")
        assert (first["images"], first["expected_images"]) == (46, 47)
        assert first["series_instance_uid"] == series_uid
        assert first["reason"] == "packing failed"
        assert as_utc(datetime.fromisoformat(first["created"])) == start + timedelta(hours=1)
        assert as_utc(datetime.fromisoformat(first["updated"])) > start + timedelta(days=1)
        assert rows[1]["expected_images"] is None
        assert [s.id for s in list_tasks(session=session, limit=1, offset=1)] == [older.id]


def test_summary_shows_destination_progress(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.SENDING)
        session.add(
            TaskDestination(
                task_id=task.id,
                name="pacs",
                ae_title="PACS",
                host="127.0.0.1",
                port=104,
                state="sending",
                sent=10,
                total=47,
            )
        )
        task_id = task.id
    with sessions() as session:
        summary = summarize(get_task(task_id, session=session)).as_dict()
        assert summary["destinations"] == [
            {
                "name": "pacs",
                "ae_title": "PACS",
                "state": "sending",
                "sent": 10,
                "total": 47,
                "reason": "",
            }
        ]


def test_instance_paths_and_count_of_a_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task = make_task(session)
        for i in range(3):
            session.add(
                Instance(
                    series_pk=task.series_pk,
                    task_id=task.id,
                    sop_instance_uid=f"1.2.3.{i}",
                    path=f"/data/{i}.dcm",
                    slice_position=float(i),
                )
            )
        session.add(
            Instance(
                series_pk=task.series_pk,
                sop_instance_uid="1.2.3.9",
                path="/data/x.dcm",
                slice_position=9.0,
            )
        )
        task_id = task.id
    with sessions() as session:
        assert instance_paths(task_id, session=session) == [f"/data/{i}.dcm" for i in range(3)]


# --- issue 8: retries end, and say where they stand ---

POLICY = RetryPolicy(backoff=Backoff(base_s=1, cap_s=60, jitter=0), budget_s=3600)


def test_transient_failures_wait_count_and_schedule_the_next_attempt(
    sessions: sessionmaker[Session],
) -> None:
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.SENDING)
        delays = [
            record_transient_failure(
                task,
                "PACS@10.0.0.1:104: connection refused",
                policy=POLICY,
                now=t0 + timedelta(seconds=s),
                session=session,
            )
            for s in (0, 1, 3)
        ]
        task_id = task.id
    assert delays == [1, 2, 4]
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.state, task.retry_attempts) == ("waiting", 3)
        assert task.retrying_since == t0
        assert task.next_attempt_at == t0 + timedelta(seconds=7)
        assert task.last_error == "PACS@10.0.0.1:104: connection refused"
        assert "attempt 3" in task.reason
        summary = summarize(task).as_dict()
    assert summary["retry_attempts"] == 3
    assert summary["next_attempt_at"] == (t0 + timedelta(seconds=7)).isoformat()
    assert summary["last_error"].endswith("connection refused")


def test_out_of_budget_the_task_fails_with_attempts_time_and_last_error(
    sessions: sessionmaker[Session],
) -> None:
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.UPLOADING)
        record_transient_failure(task, "service down", policy=POLICY, now=t0, session=session)
        last = record_transient_failure(
            task,
            "service still down",
            policy=POLICY,
            now=t0 + timedelta(hours=2),
            session=session,
        )
        task_id = task.id
    assert last is None
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert task.state == "failed"
        assert task.reason == "gave up after 2 attempts over 2 h: service still down"


def test_moving_on_or_an_operator_retry_starts_a_fresh_budget(
    sessions: sessionmaker[Session],
) -> None:
    t0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        task = make_task(session, Stage.UPLOADING)
        record_transient_failure(task, "down", policy=POLICY, now=t0, session=session)
        move_to(task, Stage.PROCESSING, session=session, state=State.WAITING)
        assert (task.retry_attempts, task.retrying_since, task.next_attempt_at) == (0, None, None)
        record_transient_failure(task, "down", policy=POLICY, now=t0, session=session)
        fail(task, "no", session=session)
        task_id = task.id
    with unit_of_work(sessions) as session:
        retry(task_id, session=session)
        task = get_task(task_id, session=session)
        assert (task.retry_attempts, task.attempts) == (0, 1)


def test_runnable_in_lists_active_and_waiting_tasks_with_their_next_attempt(
    sessions: sessionmaker[Session],
) -> None:
    later = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with unit_of_work(sessions) as session:
        active = make_task(session, Stage.SENDING)
        waiting = make_task(session, Stage.SENDING, State.WAITING)
        waiting.next_attempt_at = later
        make_task(session, Stage.SENDING, State.FAILED)
        make_task(session, Stage.PACKING)
        ids = {active.id: None, waiting.id: later}
    with unit_of_work(sessions) as session:
        assert dict(runnable_in((Stage.SENDING,), session=session)) == ids


def test_awaiting_result_lists_uploaded_tasks_only(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        uploading = make_task(session, Stage.UPLOADING)
        processing = make_task(session, Stage.PROCESSING, State.WAITING)
        make_task(session, Stage.PROCESSING, State.FAILED)
        make_task(session, Stage.DOWNLOADING)
        expected = {uploading.id, processing.id}
    with unit_of_work(sessions) as session:
        assert set(awaiting_result(session=session)) == expected
