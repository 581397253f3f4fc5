"""CompilatorActor on the shared Ray cluster: batched commits, prompt dispatch, restore.

The actor collects instance messages for a short window and commits them in one transaction;
these tests check that this changes neither the grouping nor the promptness (issue 2: a
complete series leaves ``compiling`` well under 1 s after its last slice).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker
from petray.db.models import Instance, Task, TaskEvent
from petray.dicom.ingest import InstanceStore
from petray.domain import Stage
from petray.settings import Settings, load_settings
from tests.support.databases import migrated_sqlite
from tests.test_assemblies import store_series

pytestmark = [pytest.mark.ray]

SLICES = 12  # above the default minimum image count; the synthetic series carry NumberOfSlices
TIMEOUT_S = 30.0
# Issue 2's budget from last slice to leaving compiling.
DISPATCH_BUDGET_S = 1.0


@dataclass
class Rig:
    settings: Settings
    sessions: sessionmaker[Session]
    store: InstanceStore
    actors: list[Any]

    def compilator(self) -> Any:
        from actors.compilator import CompilatorActor

        handle = CompilatorActor.remote(self.settings)  # type: ignore[attr-defined]
        self.actors.append(handle)
        return handle

    def tasks(self) -> list[Task]:
        with self.sessions() as session:
            return list(session.scalars(select(Task).order_by(Task.created)))

    def wait_validating(self, count: int) -> list[Task]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            tasks = [t for t in self.tasks() if t.stage == Stage.VALIDATING.value]
            if len(tasks) >= count:
                return tasks
            time.sleep(0.02)
        raise AssertionError(f"fewer than {count} tasks left compiling: {self.tasks()}")


@pytest.fixture
def rig(tmp_path: Path, ray_cluster: None) -> Iterator[Rig]:
    import ray

    settings = load_settings(home=tmp_path / "home", fsync=False)
    settings.ensure_dirs()
    engine = make_engine(migrated_sqlite(settings.home / "petray.db"))
    sessions = make_sessionmaker(engine)
    store = InstanceStore(settings.instances_dir, sessions, min_free_bytes=0, fsync=False)
    running = Rig(settings=settings, sessions=sessions, store=store, actors=[])
    yield running
    for handle in running.actors:
        ray.kill(handle, no_restart=True)
    engine.dispose()


def test_messages_one_by_one_make_one_task_dispatched_within_budget(rig: Rig) -> None:
    import ray

    compilator = rig.compilator()
    assert ray.get(compilator.start.remote(), timeout=TIMEOUT_S) == 0
    received = store_series(rig.store, slices=SLICES)
    for message in received:
        compilator.add_instance.remote(message)
    (task,) = rig.wait_validating(1)
    assert task.images == SLICES
    assert len(rig.tasks()) == 1
    with rig.sessions() as session:
        last = session.scalar(select(func.max(Instance.received)))
        left = session.scalar(
            select(TaskEvent.at).where(
                TaskEvent.task_id == task.id, TaskEvent.stage == Stage.VALIDATING.value
            )
        )
        assigned = session.scalar(
            select(func.count()).select_from(Instance).where(Instance.task_id == task.id)
        )
    assert assigned == SLICES
    assert last is not None and left is not None
    assert (left - last).total_seconds() < DISPATCH_BUDGET_S


def test_two_series_in_one_batch_make_two_tasks(rig: Rig) -> None:
    import ray

    compilator = rig.compilator()
    ray.get(compilator.start.remote(), timeout=TIMEOUT_S)
    first = store_series(rig.store, slices=SLICES, seed=1)
    second = store_series(rig.store, slices=SLICES, seed=2)
    interleaved = [m for pair in zip(first, second, strict=True) for m in pair]
    ray.get(compilator.add_instances.remote(interleaved), timeout=TIMEOUT_S)
    tasks = rig.wait_validating(2)
    assert sorted(t.images for t in tasks) == [SLICES, SLICES]
    assert len({t.series_pk for t in tasks}) == 2


def test_restored_instances_still_in_flight_do_not_open_a_second_task(rig: Rig) -> None:
    """Stored while the actor was down: restore picks them up, and their late messages are
    recognised rather than taken for a re-send of the same series."""
    import ray

    received = store_series(rig.store, slices=SLICES)
    compilator = rig.compilator()
    ray.get(compilator.start.remote(), timeout=TIMEOUT_S)
    rig.wait_validating(1)
    ray.get(compilator.add_instances.remote(received), timeout=TIMEOUT_S)
    # Let a batch window pass so that any (wrong) second task would have been opened.
    time.sleep(0.2)
    status = ray.get(compilator.status.remote(), timeout=TIMEOUT_S)
    assert status["open"] == 0 and status["pending"] == 0
    assert len(rig.tasks()) == 1


def test_a_task_cancelled_while_compiling_is_never_dispatched(rig: Rig) -> None:
    import ray

    from petray.db.engine import unit_of_work
    from petray.tasks import cancel

    rig.settings = load_settings(
        home=rig.settings.home, fsync=False, sweep_interval_s=0.2
    )  # the sweep forgets the cancelled assembly quickly
    compilator = rig.compilator()
    ray.get(compilator.start.remote(), timeout=TIMEOUT_S)
    received = store_series(rig.store, slices=SLICES)
    ray.get(compilator.add_instances.remote(received[:6]), timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while not rig.tasks() or rig.tasks()[0].images < 6:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (task,) = rig.tasks()
    with unit_of_work(rig.sessions) as session:
        cancel(task.id, session=session)
    ray.get(compilator.add_instances.remote(received[6:]), timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while len(rig.tasks()) < 2:
        assert time.monotonic() < deadline, "the rest of the series found no task"
        time.sleep(0.05)
    cancelled, rest = rig.tasks()
    assert (cancelled.stage, cancelled.state) == ("compiling", "cancelled")
    # The rest is a task of its own (an incomplete series: it waits, then aborts with a reason).
    assert rest.id != cancelled.id and rest.images == SLICES - 6
