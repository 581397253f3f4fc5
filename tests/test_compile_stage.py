"""The Compiling stage's rules on batches (petray.stages.compile, issue 14), without Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Instance
from petray.demo.synth import make_pet_series
from petray.dicom.header import extract_instance_header
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.domain import Stage, State
from petray.stages.compilator import CompilatorConfig
from petray.stages.compile import BatchOutcome, Compiler
from petray.tasks import cancel, get_task

CONFIG = CompilatorConfig(
    min_images=2, slice_gap_tolerance=1.5, inactivity_wait_s=5.0, abort_timeout_s=600.0
)


@pytest.fixture
def store(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> InstanceStore:
    root = tmp_path / "instances"
    root.mkdir()
    return InstanceStore(root, sqlite_sessions, min_free_bytes=0, fsync=False)


def received(
    store: InstanceStore, slices: int, *, declared: int | None = None, seed: int = 0
) -> list[ReceivedInstance]:
    """A synthetic series stored as the SCP stores it; NumberOfSlices says ``declared``."""
    datasets = make_pet_series(slices=slices, rows=8, cols=8, seed=seed)
    for ds in datasets:
        if declared is None:
            del ds.NumberOfSlices
        else:
            ds.NumberOfSlices = declared
    return [
        store.store(b"-", extract_instance_header(ds), calling_ae="SCANNER", peer_host="127.0.0.1")
        for ds in datasets
    ]


def take(
    compiler: Compiler, sessions: sessionmaker[Session], batch: list[ReceivedInstance]
) -> BatchOutcome:
    with unit_of_work(sessions) as session:
        return compiler.take(batch, session=session, config=CONFIG, now=time.time())


def task_of(sessions: sessionmaker[Session], instance: ReceivedInstance) -> str | None:
    with unit_of_work(sessions) as session:
        return session.scalar(select(Instance.task_id).where(Instance.id == instance.instance_pk))


def test_a_whole_declared_series_leaves_compiling_in_its_batch(
    store: InstanceStore, sqlite_sessions: sessionmaker[Session]
) -> None:
    series = received(store, 6, declared=6)
    compiler = Compiler()
    outcome = take(compiler, sqlite_sessions, series)
    [(assembly, failure)] = outcome.closed
    assert failure == "" and outcome.recheck == {}
    assert {task_of(sqlite_sessions, i) for i in series} == {assembly.task_id}
    with unit_of_work(sqlite_sessions) as session:
        task = get_task(assembly.task_id, session=session)
        assert (task.stage, task.state, task.images) == (Stage.VALIDATING, State.ACTIVE, 6)
    assert len(compiler) == 0


def test_an_undeclared_series_waits_for_quiet_then_a_resent_batch_changes_nothing(
    store: InstanceStore, sqlite_sessions: sessionmaker[Session]
) -> None:
    series = received(store, 4)
    compiler = Compiler()
    first = take(compiler, sqlite_sessions, series[:2])
    assert first.closed == [] and len(compiler) == 1
    [(task_id, delay)] = first.recheck.items()
    assert 0 < delay <= CONFIG.inactivity_wait_s
    second = take(compiler, sqlite_sessions, series[2:])
    assert task_id in second.settled and task_id in second.recheck
    # The same instances again (a message repeated after a restart): already claimed.
    again = take(compiler, sqlite_sessions, series)
    assert again.closed == [] and again.recheck == {} and len(compiler) == 1
    assert {task_of(sqlite_sessions, i) for i in series} == {task_id}


def test_a_cancelled_task_is_forgotten_and_its_series_starts_a_new_one(
    store: InstanceStore, sqlite_sessions: sessionmaker[Session]
) -> None:
    series = received(store, 4)
    compiler = Compiler()
    [cancelled] = take(compiler, sqlite_sessions, series[:2]).recheck
    with unit_of_work(sqlite_sessions) as session:
        cancel(cancelled, session=session)
    outcome = take(compiler, sqlite_sessions, series[2:])
    assert cancelled in outcome.settled
    [fresh] = outcome.recheck
    assert fresh != cancelled
    assert task_of(sqlite_sessions, series[3]) == fresh


def test_more_slices_than_declared_reopen_the_dispatched_task(
    store: InstanceStore, sqlite_sessions: sessionmaker[Session]
) -> None:
    series = received(store, 6, declared=4)
    compiler = Compiler()
    [(dispatched, failure)] = take(compiler, sqlite_sessions, series[:4]).closed
    assert failure == ""
    compiler.dispatched(dispatched, time.time())
    take(compiler, sqlite_sessions, series[4:])
    # Still validating when the rest came: the task takes the slices back, with a note.
    assert {task_of(sqlite_sessions, i) for i in series} == {dispatched.task_id}
    with unit_of_work(sqlite_sessions) as session:
        task = get_task(dispatched.task_id, session=session)
        assert "more images arrived than NumberOfSlices (4) said" in task.notes
