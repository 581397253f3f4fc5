"""Retention with a fake clock and a fake disk: what goes, when, in which order, and what stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, Instance, Task
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.errors import InvalidTransition
from petray.settings import Settings
from petray.site import retention
from petray.site.retention import RetentionPolicy
from petray.task_files import TaskFiles, measure
from petray.tasks import retry
from tests.support.app import AppHarness, harness, make_task, page_csrf
from tests.test_task_files import populate

__all__ = ["harness"]

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SIZE = 1000  # bytes per file
FILES = 9  # populate() writes 9 files per task
POLICY = RetentionPolicy(done_days=7, failed_days=30, min_free_bytes=0)


def _task(
    settings: Settings,
    sessions: sessionmaker[Session],
    state: State,
    finished: datetime,
    stage: Stage | None = None,
) -> str:
    with unit_of_work(sessions) as session:
        task_id = add_task(session, stage=stage or Stage(state.value), state=state)
        session.flush()
        populate(settings, session, task_id, size=SIZE)
    with unit_of_work(sessions) as session:
        session.execute(update(Task).where(Task.id == task_id).values(updated=finished))
    return task_id


def _files_left(settings: Settings, sessions: sessionmaker[Session], task_id: str) -> int:
    with sessions() as session:
        return measure(TaskFiles.of(settings, task_id).paths(session=session)).files


def _run(
    settings: Settings,
    sessions: sessionmaker[Session],
    policy: RetentionPolicy = POLICY,
    *,
    now: datetime = NOW,
    capacity: int | None = None,
    dry_run: bool = False,
) -> retention.PurgeReport:
    """Run retention on a fake disk of ``capacity`` bytes holding the files under the home."""

    def free() -> int:
        if capacity is None:
            return 10**15
        return capacity - measure([settings.home]).bytes

    return retention.run(
        sessions,
        policy,
        lambda task_id: TaskFiles.of(settings, task_id),
        now=now,
        free_bytes=free,
        dry_run=dry_run,
    )


def test_files_go_after_their_retention_and_rows_stay(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    old_done = _task(settings, sessions, State.DONE, NOW - timedelta(days=8))
    new_done = _task(settings, sessions, State.DONE, NOW - timedelta(days=6))
    old_failed = _task(settings, sessions, State.FAILED, NOW - timedelta(days=31), Stage.PACKING)
    recent_failed = _task(settings, sessions, State.FAILED, NOW - timedelta(days=8), Stage.PACKING)
    cancelled = _task(settings, sessions, State.CANCELLED, NOW - timedelta(days=40), Stage.SENDING)
    active = _task(settings, sessions, State.ACTIVE, NOW - timedelta(days=90), Stage.SENDING)

    report = _run(settings, sessions)
    assert [t.task_id for t in report.tasks] == [cancelled, old_failed, old_done]
    assert {t.reason for t in report.tasks} == {"age"}
    assert (len(report.tasks), report.files, report.bytes) == (3, 3 * FILES, 3 * FILES * SIZE)
    for task_id in (cancelled, old_failed, old_done):
        assert _files_left(settings, sessions, task_id) == 0
    for task_id in (new_done, recent_failed, active):
        assert _files_left(settings, sessions, task_id) == FILES

    with sessions() as session:
        rows = {t.id: t for t in session.scalars(select(Task))}
        assert len(rows) == 6  # history kept
        assert rows[old_done].files_purged_at == NOW
        assert rows[old_done].updated == NOW - timedelta(days=8)  # still when it finished
        assert rows[new_done].files_purged_at is None
        assert session.scalar(select(Instance.path).where(Instance.task_id == old_done).limit(1)), (
            "instance rows stay as history"
        )
        events = list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge"))
        )
    assert sorted(e.target for e in events) == sorted(f"task {t}" for t in report_ids(report))
    assert all(e.actor == "petray" and e.detail["files"] == FILES for e in events)

    # A second run finds nothing; the clock moving on makes the next ones due.
    assert _run(settings, sessions).tasks == []
    later = _run(settings, sessions, now=NOW + timedelta(days=2))
    assert [t.task_id for t in later.tasks] == [new_done]
    latest = _run(settings, sessions, now=NOW + timedelta(days=23))
    assert [t.task_id for t in latest.tasks] == [recent_failed]


def report_ids(report: retention.PurgeReport) -> list[str]:
    return [t.task_id for t in report.tasks]


def test_dry_run_reports_and_changes_nothing(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    task_id = _task(settings, sessions, State.DONE, NOW - timedelta(days=8))
    report = _run(settings, sessions, dry_run=True)
    assert (report_ids(report), report.files, report.bytes) == ([task_id], FILES, FILES * SIZE)
    assert report.summary().startswith(f"would free 1 tasks, {FILES} files")
    assert _files_left(settings, sessions, task_id) == FILES
    with sessions() as session:
        assert session.get(Task, task_id).files_purged_at is None  # type: ignore[union-attr]
        assert session.scalars(select(AuditEvent)).all() == []


def test_low_disk_purges_oldest_done_first_until_twice_the_floor(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    # All young: none is due by age. Each task holds FILES x SIZE bytes.
    failed = _task(settings, sessions, State.FAILED, NOW - timedelta(days=5), Stage.PACKING)
    oldest = _task(settings, sessions, State.DONE, NOW - timedelta(days=3))
    middle = _task(settings, sessions, State.DONE, NOW - timedelta(days=2))
    newest = _task(settings, sessions, State.DONE, NOW - timedelta(days=1))
    active = _task(settings, sessions, State.WAITING, NOW - timedelta(days=9), Stage.SENDING)
    used = measure([settings.home]).bytes
    floor = 8 * SIZE
    # Free is 5 x SIZE now; twice the floor needs 16 x SIZE: two tasks (9 x SIZE each) must go.
    capacity = used + 5 * SIZE
    policy = RetentionPolicy(done_days=7, failed_days=30, min_free_bytes=floor)

    planned = _run(settings, sessions, policy, capacity=capacity, dry_run=True)
    assert report_ids(planned) == [oldest, middle]
    report = _run(settings, sessions, policy, capacity=capacity)
    assert report_ids(report) == [oldest, middle]
    assert {t.reason for t in report.tasks} == {"disk"}
    assert report.free_before == 5 * SIZE
    expected = {oldest: 0, middle: 0, newest: FILES, failed: FILES, active: FILES}
    for task_id, left in expected.items():
        assert _files_left(settings, sessions, task_id) == left

    # Short of space with no done task left: failed ones go next, never active ones.
    tight = RetentionPolicy(done_days=7, failed_days=30, min_free_bytes=100 * SIZE)
    squeezed = _run(settings, sessions, tight, capacity=capacity)
    assert report_ids(squeezed) == [newest, failed]
    assert _files_left(settings, sessions, active) == FILES


def test_a_purged_task_cannot_be_retried(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    task_id = _task(settings, sessions, State.FAILED, NOW - timedelta(days=31), Stage.PACKING)
    _run(settings, sessions)
    with (
        pytest.raises(InvalidTransition, match="removed by retention"),
        unit_of_work(sessions) as session,
    ):
        retry(task_id, session=session)


@pytest.mark.parametrize(("done", "failed"), [(0, 30), (7, 0)])
def test_retention_periods_are_at_least_a_day(done: int, failed: int) -> None:
    with pytest.raises(ValueError):
        RetentionPolicy(done_days=done, failed_days=failed, min_free_bytes=0)


def test_sizes_are_printed_for_people() -> None:
    assert retention.format_bytes(512) == "512 B"
    assert retention.format_bytes(3 * 2**30 + 2**29) == "3.5 GiB"


def test_policy_reads_the_site_configuration(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from petray.site.siteconfig import get_site_config

    with unit_of_work(sessions) as session:
        config = get_site_config(session=session)
        config.retention_done_days = 3
    with sessions() as session:
        policy = RetentionPolicy.load(settings, session=session)
    assert (policy.done_days, policy.failed_days) == (3, 30)
    assert policy.min_free_bytes == settings.min_free_disk_mb * 2**20
    assert policy.wanted_free_bytes == 2 * policy.min_free_bytes


def test_purge_command_dry_run_then_real(
    settings: Settings,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import getpass
    import json

    from petray.cli import main

    now = datetime.now(UTC)
    old = _task(settings, sessions, State.DONE, now - timedelta(days=8))
    young = _task(settings, sessions, State.DONE, now - timedelta(days=1))
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    monkeypatch.setenv("PETRAY_HOME", str(settings.home))
    monkeypatch.setenv("PETRAY_DATABASE_URL", url)
    monkeypatch.setenv("PETRAY_MIN_FREE_DISK_MB", "0")

    assert main(["purge", "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert (planned["dry_run"], planned["tasks"], planned["files"]) == (True, 1, FILES)
    assert [t["task_id"] for t in planned["purged"]] == [old]
    assert _files_left(settings, sessions, old) == FILES

    assert main(["purge"]) == 0
    out = capsys.readouterr().out
    assert f"freed 1 tasks, {FILES} files" in out and old in out
    assert _files_left(settings, sessions, old) == 0
    assert _files_left(settings, sessions, young) == FILES
    with sessions() as session:
        event = session.scalars(select(AuditEvent)).one()
    assert (event.actor, event.source, event.target) == (getpass.getuser(), "cli", f"task {old}")


def test_retention_is_edited_in_the_api_and_console(harness: AppHarness) -> None:
    admin = harness.login("admin")
    page = admin.get("/config")
    assert 'name="retention_done_days"' in page.text and 'value="7"' in page.text
    saved = admin.post(
        "/config/retention",
        data={
            "csrf_token": page_csrf(admin, "/config"),
            "retention_done_days": "3",
            "retention_failed_days": "60",
        },
        follow_redirects=False,
    )
    assert saved.status_code == 303
    config = admin.get("/api/v1/config").json()
    assert (config["retention_done_days"], config["retention_failed_days"]) == (3, 60)
    refused = admin.post(
        "/config/retention",
        data={
            "csrf_token": page_csrf(admin, "/config"),
            "retention_done_days": "0",
            "retention_failed_days": "60",
        },
    )
    assert refused.status_code == 422
    with harness.sessions() as session:
        changes = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "config.update")
        ).all()
    assert [c.detail["changed"] for c in changes] == [
        {
            "retention_done_days": {"from": 7, "to": 3},
            "retention_failed_days": {"from": 30, "to": 60},
        }
    ]


def test_the_task_page_says_the_files_were_removed(harness: AppHarness) -> None:
    task_id = make_task(harness.sessions, stage=Stage.PACKING, state=State.FAILED, reason="x")
    with unit_of_work(harness.sessions) as session:
        session.execute(update(Task).where(Task.id == task_id).values(files_purged_at=NOW))
    client = harness.login("operator")
    page = client.get(f"/tasks/{task_id}").text
    assert 'id="files-purged"' in page and "2026-06-01 12:00" in page
    assert f"/tasks/{task_id}/retry" not in page and "mip-source" not in page
    detail = client.get(f"/api/v1/tasks/{task_id}").json()
    assert detail["files_purged_at"].startswith("2026-06-01T12:00")
    refused = client.post(f"/tasks/{task_id}/retry", data={"csrf_token": page_csrf(client)})
    assert "removed by retention" in refused.text
