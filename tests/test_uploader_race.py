"""The Uploader's commit after a fast service: when the result is already in the shared folder as
the Uploader commits, the task goes to downloading and the Downloader is told, instead of waiting
for a callback that has come and gone (on SQLite the callback's move to downloading could land
between the Uploader's read and its write, and be overwritten by "waiting for the result")."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from actors.uploader import UploaderActor
from petray.db.engine import unit_of_work
from petray.domain import Stage, State
from petray.settings import Settings
from petray.shared_folder import result_path
from petray.tasks import get_task
from tests.test_tasks import make_task


def advance(
    settings: Settings, sessions: sessionmaker[Session], before: Callable[[str], None]
) -> tuple[Stage | None, Any]:
    """The Uploader's on_advance (its class without Ray) for a task in uploading."""
    cls = UploaderActor.__ray_metadata__.modified_class
    actor = cls.__new__(cls)
    actor.settings = settings
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.UPLOADING).id
    before(task_id)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        moved = actor.on_advance(task, Stage.PROCESSING, session=session)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        return moved, (task.stage, task.state, task.deadline)


def test_without_a_result_the_task_waits_for_it_with_a_deadline(
    settings: Settings, sqlite_sessions: sessionmaker[Session]
) -> None:
    moved, (stage, state, deadline) = advance(settings, sqlite_sessions, lambda _: None)
    assert moved is None
    assert (stage, state) == (Stage.PROCESSING, State.WAITING) and deadline is not None


def test_a_result_already_returned_sends_the_task_to_the_downloader(
    settings: Settings, sqlite_sessions: sessionmaker[Session]
) -> None:
    def service_done(task_id: str) -> None:
        path = result_path(settings.resolved_shared_dir, task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("denoised.npy", b"")

    moved, (stage, state, _) = advance(settings, sqlite_sessions, service_done)
    assert moved == Stage.DOWNLOADING
    assert (stage, state) == (Stage.DOWNLOADING, State.ACTIVE)
