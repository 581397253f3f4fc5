"""One place knows a task's files: delete removes every one of them, and nothing of another task."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Instance, OutputSeries, Task
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.settings import Settings
from petray.site.activity import remove_files
from petray.task_files import FileCount, TaskFiles, measure, remove
from petray.tasks import delete_task
from tests.support.app import AppHarness, harness, make_task

__all__ = ["harness"]


def populate(settings: Settings, session: Session, task_id: str, *, size: int = 100) -> list[Path]:
    """Every kind of file a task can have, each ``size`` bytes; returns the files written."""
    files = TaskFiles.of(settings, task_id)
    task = session.get(Task, task_id)
    assert task is not None
    written: list[Path] = []

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        written.append(path)
        return path

    for i in range(3):
        path = write(settings.instances_dir / f"1.2.3.{task_id}" / f"1.2.3.{i}.a{i}.dcm")
        session.add(
            Instance(
                series_pk=task.series_pk,
                task_id=task_id,
                sop_instance_uid=f"1.2.3.{i}",
                path=str(path),
                slice_position=float(i),
            )
        )
    series_dir = files.outputs / "series-1"
    write(series_dir / "1.dcm")
    session.add(
        OutputSeries(
            task_id=task_id,
            series_instance_uid="1.2.9",
            series_number=1,
            description="d",
            directory=str(series_dir),
            instances=1,
        )
    )
    for path in (files.archive, files.result_archive, files.to_process, files.processed):
        write(path)
    write(files.previews / "source-3.png")
    return written


def test_paths_cover_rows_and_every_fixed_file(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        task_id = add_task(session, stage=Stage.DONE, state=State.DONE)
        session.flush()
        written = populate(settings, session, task_id)
    files = TaskFiles.of(settings, task_id)
    with unit_of_work(sessions) as session:
        paths = files.paths(session=session)
    assert files.result_archive in paths
    # Every written file is one of the paths or lies under one of them.
    for path in written:
        assert any(path == p or p in path.parents for p in paths), path
    assert measure(paths) == FileCount(files=len(written), bytes=100 * len(written))


def test_task_ids_that_are_not_plain_identifiers_are_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="plain identifier"):
        TaskFiles.of(settings, "../etc")


def test_delete_removes_every_file_and_leaves_other_tasks_alone(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with unit_of_work(sessions) as session:
        doomed = add_task(session, stage=Stage.DONE, state=State.DONE)
        kept = add_task(session, stage=Stage.DONE, state=State.DONE)
        session.flush()
        doomed_files = populate(settings, session, doomed, size=10)
        kept_files = populate(settings, session, kept, size=10)
    with unit_of_work(sessions) as session:
        paths = delete_task(doomed, session=session, files=TaskFiles.of(settings, doomed))
    removed = remove_files(paths)
    assert removed == FileCount(files=len(doomed_files), bytes=10 * len(doomed_files))
    assert [p for p in doomed_files if p.exists()] == []
    assert not TaskFiles.of(settings, doomed).result_archive.exists()
    assert all(p.exists() for p in kept_files)


def test_remove_counts_only_what_it_removed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "one").write_bytes(b"12345")
    (tmp_path / "two").write_bytes(b"123")
    assert remove([tree, tmp_path / "two", tmp_path / "missing"]) == FileCount(2, 8)
    assert not tree.exists()
    assert remove([tree]) == FileCount()


def test_console_delete_removes_the_result_archive(harness: AppHarness) -> None:
    """Issue 10: a deleted task's ``work/{task}.result.zip`` was left behind (GiBs each)."""
    task_id = make_task(harness.sessions, stage=Stage.DONE, state=State.DONE)
    with unit_of_work(harness.sessions) as session:
        written = populate(harness.settings, session, task_id)
    client = harness.login("operator")
    token = client.get("/tasks").text.split('name="csrf_token" value="')[1].split('"')[0]
    response = client.post(
        f"/tasks/{task_id}/delete", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert [p.name for p in written if p.exists()] == []
