"""Assembly persistence on both databases: what the Compilator commits is what it rebuilds."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Instance, Task
from petray.demo.synth import make_pet_series
from petray.dicom.header import extract_instance_header
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.domain import Stage, State
from petray.site.siteconfig import get_site_config
from petray.stages.assemblies import (
    assign,
    compiling,
    load_config,
    open_task,
    reopen_or_fail,
    restore,
    slice_spacing_mm,
    still_unassigned,
    unassigned,
)
from petray.stages.compilator import CompilatorConfig, SeriesAssembly
from petray.tasks import delete_task, get_task, move_to


def store_series(
    store: InstanceStore, *, slices: int, seed: int = 0, calling_ae: str = "SCANNER"
) -> list[ReceivedInstance]:
    """Store a synthetic series the way the SCP does (file and row first)."""
    datasets = make_pet_series(slices=slices, rows=8, cols=8, seed=seed)
    return [
        store.store(
            b"not decoded by the store",
            extract_instance_header(ds),
            calling_ae=calling_ae,
            peer_host="127.0.0.1",
        )
        for ds in datasets
    ]


@pytest.fixture
def store(tmp_path: Path, sessions: sessionmaker[Session]) -> InstanceStore:
    root = tmp_path / "instances"
    root.mkdir()
    return InstanceStore(root, sessions, min_free_bytes=0, fsync=False)


def compile_into_task(
    instances: list[ReceivedInstance], sessions: sessionmaker[Session], now: float
) -> SeriesAssembly:
    """What the Compilator actor does per instance: open or route, add, assign, commit."""
    assembly: SeriesAssembly | None = None
    for instance in instances:
        with unit_of_work(sessions) as session:
            if assembly is None:
                assembly = open_task(instance, session=session, now=now)
            assembly.add(instance, now)
            assign([instance.instance_pk], assembly, session=session)
    assert assembly is not None
    return assembly


def test_restore_returns_open_assemblies_and_unassigned_instances(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    first = store_series(store, slices=12, seed=1)
    second = store_series(store, slices=11, seed=2, calling_ae="PACS")
    compiled = compile_into_task(first[:7], sessions, time.time())
    other = compile_into_task(second[:3], sessions, time.time())

    with sessions() as session:
        assemblies, pending = restore(session=session)
        task = session.get(Task, compiled.task_id)
        assert task is not None
        assert (task.images, task.expected_images) == (7, 12)

    assert [a.task_id for a in assemblies] == [compiled.task_id, other.task_id]
    restored = assemblies[0]
    assert restored.sop_uids == {i.sop_instance_uid for i in first[:7]}
    assert restored.positions == [i.slice_position for i in first[:7]]
    assert restored.expected == 12
    assert (restored.series_pk, restored.calling_ae, restored.peer_host) == (
        compiled.series_pk,
        "SCANNER",
        "127.0.0.1",
    )
    assert assemblies[1].calling_ae == "PACS"
    assert assemblies[1].expected == 11
    # Unassigned instances come back in the order they were received, with every field.
    assert pending == first[7:] + second[3:]


def test_restored_assembly_decides_like_the_original(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    instances = store_series(store, slices=12)
    now = time.time()
    compiled = compile_into_task(instances, sessions, now)
    with sessions() as session:
        config = load_config(session=session)
        [restored], pending = restore(session=session)
    assert pending == []
    assert restored.images == compiled.images == 12
    assert restored.decide(config, now + 1) == compiled.decide(config, now + 1)


def test_tasks_past_compiling_are_not_restored(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    compiled = compile_into_task(store_series(store, slices=12), sessions, time.time())
    with unit_of_work(sessions) as session:
        task = session.get(Task, compiled.task_id)
        assert task is not None
        move_to(task, Stage.VALIDATING, session=session)
    with sessions() as session:
        assert restore(session=session) == ([], [])


@pytest.fixture
def non_utc_local_time() -> Iterator[None]:
    """A host clock far from UTC, so naive timestamps read as local time show up."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.usefixtures("non_utc_local_time")
def test_restored_last_activity_is_the_real_receive_time(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    before = time.time()
    instances = store_series(store, slices=12)
    compile_into_task(instances[:5], sessions, time.time())
    after = time.time()
    with sessions() as session:
        [restored], _ = restore(session=session)
    # Off by hours if a zone-less SQLite timestamp were read as local time.
    assert before - 1 <= restored.last_activity <= after + 1


def test_slice_spacing_of_a_task(store: InstanceStore, sessions: sessionmaker[Session]) -> None:
    instances = store_series(store, slices=12)
    compiled = compile_into_task(instances, sessions, time.time())
    single = compile_into_task(store_series(store, slices=1, seed=5), sessions, time.time())
    with sessions() as session:
        # make_pet_series spaces slices 3 mm apart by default.
        assert slice_spacing_mm(compiled.task_id, session=session) == pytest.approx(3.0)
        assert slice_spacing_mm(single.task_id, session=session) == 0.0


def test_load_config_reads_the_site_thresholds(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        row = get_site_config(session=session)
        row.min_images, row.slice_gap_tolerance = 20, 2.0
        row.inactivity_wait_s, row.abort_timeout_s = 7.5, 120.0
    with sessions() as session:
        assert load_config(session=session) == CompilatorConfig(
            min_images=20, slice_gap_tolerance=2.0, inactivity_wait_s=7.5, abort_timeout_s=120.0
        )


def test_assign_links_the_instance_row(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    instances = store_series(store, slices=3)
    compiled = compile_into_task(instances[:2], sessions, time.time())
    with sessions() as session:
        linked = session.scalars(
            select(Instance.id).where(Instance.task_id == compiled.task_id).order_by(Instance.id)
        ).all()
    assert linked == [i.instance_pk for i in instances[:2]]


# --- issue 8: acknowledged means owned ---


def test_still_unassigned_keeps_each_unclaimed_instance_once(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    instances = store_series(store, slices=4)
    compile_into_task(instances[:1], sessions, time.time())
    with unit_of_work(sessions) as session:
        kept = still_unassigned([*instances, instances[2]], session=session)
    # The claimed one is dropped, the repeated message of an unclaimed one counts once.
    assert [i.instance_pk for i in kept] == [i.instance_pk for i in instances[1:]]


def test_a_message_about_a_deleted_instance_cannot_claim_a_reused_row_id(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    # SQLite gives the next insert the id of a deleted last row; PostgreSQL never reuses ids.
    old = store_series(store, slices=1, seed=1)[0]
    with unit_of_work(sessions) as session:
        session.execute(delete(Instance).where(Instance.id == old.instance_pk))
    new = store_series(store, slices=1, seed=2)[0]
    if sessions.kw["bind"].dialect.name == "sqlite":
        assert new.instance_pk == old.instance_pk  # the reuse this guards against
    with unit_of_work(sessions) as session:
        assert still_unassigned([old], session=session) == []
        assert still_unassigned([new], session=session) == [new]


def test_unassigned_after_a_delete_of_the_newest_task_are_found(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    first = store_series(store, slices=3, seed=1)
    compiled = compile_into_task(first, sessions, time.time())
    with unit_of_work(sessions) as session:
        delete_task(compiled.task_id, session=session)
    second = store_series(store, slices=3, seed=2)
    with unit_of_work(sessions) as session:
        found = unassigned(session=session)
        assert compiling([compiled.task_id], session=session) == set()
    assert [i.sop_instance_uid for i in found] == [i.sop_instance_uid for i in second]


def test_the_sweep_leaves_fresh_instances_to_their_messages(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    store_series(store, slices=2)
    with unit_of_work(sessions) as session:
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        assert unassigned(session=session, received_before=long_ago) == []
        assert len(unassigned(session=session)) == 2


def _dispatched(
    store: InstanceStore, sessions: sessionmaker[Session], stage: Stage, state: State
) -> str:
    compiled = compile_into_task(store_series(store, slices=3), sessions, time.time())
    with unit_of_work(sessions) as session:
        move_to(get_task(compiled.task_id, session=session), stage, session=session, state=state)
    return compiled.task_id


@pytest.mark.parametrize("stage", [Stage.VALIDATING, Stage.PACKING])
def test_a_task_still_on_the_gateway_is_reopened_for_more_slices(
    store: InstanceStore, sessions: sessionmaker[Session], stage: Stage
) -> None:
    task_id = _dispatched(store, sessions, stage, State.WAITING)
    with unit_of_work(sessions) as session:
        assert reopen_or_fail(task_id, "more slices than NumberOfSlices", session=session)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.expected_images) == ("compiling", "active", None)
        assert task.notes == "more slices than NumberOfSlices"
        assert compiling([task_id], session=session) == {task_id}


def test_a_task_that_left_the_gateway_fails_naming_the_contradiction(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    task_id = _dispatched(store, sessions, Stage.PROCESSING, State.WAITING)
    with unit_of_work(sessions) as session:
        assert not reopen_or_fail(task_id, "more slices than NumberOfSlices", session=session)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.state, task.reason) == ("failed", "more slices than NumberOfSlices")


def test_a_delivered_task_is_left_alone(
    store: InstanceStore, sessions: sessionmaker[Session]
) -> None:
    task_id = _dispatched(store, sessions, Stage.DONE, State.DONE)
    with unit_of_work(sessions) as session:
        assert not reopen_or_fail(task_id, "late slices", session=session)
        assert get_task(task_id, session=session).state == "done"
