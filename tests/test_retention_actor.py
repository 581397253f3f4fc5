"""RetentionActor on the shared Ray cluster: it purges on its own timer, and again after a kill."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import Task
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.settings import Settings, load_settings
from petray.task_files import TaskFiles, measure
from tests.support.databases import migrated_sqlite
from tests.test_task_files import populate

pytestmark = [pytest.mark.ray]
TIMEOUT_S = 30.0


@pytest.fixture
def rig(tmp_path: Path, ray_cluster: None) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = load_settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 'petray.db'}",
        retention_interval_s=0.3,
        min_free_disk_mb=0,
        fsync=False,
    )
    settings.ensure_dirs()
    engine = make_engine(migrated_sqlite(tmp_path / "petray.db"))
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def _old_done_task(settings: Settings, sessions: sessionmaker[Session]) -> str:
    with unit_of_work(sessions) as session:
        task_id = add_task(session, stage=Stage.DONE, state=State.DONE)
        session.flush()
        populate(settings, session, task_id)
    finished = datetime.now(UTC) - timedelta(days=8)
    with unit_of_work(sessions) as session:
        session.execute(update(Task).where(Task.id == task_id).values(updated=finished))
    return task_id


def _wait_purged(settings: Settings, sessions: sessionmaker[Session], task_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with sessions() as session:
            task = session.get(Task, task_id)
            assert task is not None
            if task.files_purged_at is not None:
                left = measure(TaskFiles.of(settings, task_id).paths(session=session))
                if left.files == 0:
                    return
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} not purged within {TIMEOUT_S} s")


def test_the_actor_purges_on_its_timer_and_after_a_restart(
    rig: tuple[Settings, sessionmaker[Session]],
) -> None:
    import ray

    from actors.retention import RetentionActor

    settings, sessions = rig
    first = _old_done_task(settings, sessions)
    actor: Any = RetentionActor.remote(settings)  # type: ignore[attr-defined]
    try:
        _wait_purged(settings, sessions, first)
        ray.kill(actor, no_restart=False)
        second = _old_done_task(settings, sessions)
        _wait_purged(settings, sessions, second)
        report = ray.get(actor.purge.remote(dry_run=True), timeout=TIMEOUT_S)
        assert report["tasks"] == 0 and report["dry_run"] is True
    finally:
        ray.kill(actor, no_restart=True)
