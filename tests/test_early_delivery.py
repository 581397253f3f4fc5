"""Early delivery (issue 13): a series written while its task still unpacks is sent at once.

The StoreScuActor's class without Ray (its methods are plain Python over the database) against
a real DCMTK storescp: what an early delivery sends is recorded like the stage's own sends, the
Sending stage then sends only what is missing and alone sets the destination's state, and a
task that is no longer unpacking is left to the stage.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, SentInstance, TaskDestination
from petray.domain import Stage, State
from petray.imaging.filters import FilterSpec
from petray.imaging.quant import QuantThresholds
from petray.settings import Settings
from petray.site.siteconfig import get_site_config
from petray.stages.outputs import BuiltSeries, record_outputs
from petray.stages.records import Quant, QuantCheck
from petray.stages.review import can_hold
from petray.tasks import get_task, move_to
from tests.support.app import make_task
from tests.support.peers import StoreSCP, write_pet_series
from tests.support.store_scu import store_scu


def _unpacking_task(sessions: sessionmaker[Session], peer: StoreSCP) -> tuple[str, int]:
    task_id = make_task(sessions, stage=Stage.UNPACKING, state=State.ACTIVE)
    with unit_of_work(sessions) as session:
        get_site_config(session=session)  # made at the gateway's start, as in production
        row = TaskDestination(
            task_id=task_id, name="pacs", ae_title=peer.aet, host=peer.host, port=peer.port
        )
        session.add(row)
        session.flush()
        return task_id, row.id


@dataclass
class Case:
    """The StoreSCU without Ray, a task still unpacking and its destination: storescp."""

    actor: Any
    task_id: str
    pk: int


@pytest.fixture
def case(
    settings: Settings, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP
) -> Case:
    task_id, pk = _unpacking_task(sqlite_sessions, dcmtk_storescp)
    return Case(store_scu(sqlite_sessions, settings), task_id, pk)


def _series(tmp_path: Path, number: int, count: int) -> BuiltSeries:
    directory = tmp_path / "out" / f"series-{number}"
    write_pet_series(directory, count=count)
    spec = FilterSpec(id=number, description=f"f{number}", series_number=number, fwhm_mm=0.0)
    return BuiltSeries(spec, f"1.2.3.{number}", f"f{number}", directory, count)


def _finish_unpacking(sessions: sessionmaker[Session], task_id: str, built: list[Any]) -> None:
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        record_outputs(task, built, session=session)
        move_to(task, Stage.SENDING, session=session)


def _acknowledged(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(SentInstance)) or 0)


def _destination(sessions: sessionmaker[Session], pk: int) -> tuple[str, int, int]:
    with sessions() as session:
        row = session.get(TaskDestination, pk)
        assert row is not None
        return row.state, row.sent, row.total


def test_a_series_written_during_unpacking_is_sent_once_and_the_stage_sends_the_rest(
    case: Case, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    actor, task_id, pk = case.actor, case.task_id, case.pk
    first, second = _series(tmp_path, 801, 4), _series(tmp_path, 802, 3)

    actor._deliver_early(task_id, first.directory)
    dcmtk_storescp.wait_received(4)
    assert _acknowledged(sqlite_sessions) == 4
    # A head start only: the destination is not done until the Sending stage says so.
    assert _destination(sqlite_sessions, pk)[0] == "sending"

    _finish_unpacking(sqlite_sessions, task_id, [first, second])
    assert _destination(sqlite_sessions, pk) == ("sending", 4, 7)
    actor.handle(task_id)
    dcmtk_storescp.wait_received(7)
    assert dcmtk_storescp.store_request_count() == 7  # nothing sent twice
    assert _destination(sqlite_sessions, pk) == ("done", 7, 7)


def test_the_stage_waits_for_early_deliveries_still_queued(
    case: Case, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    actor, task_id, pk = case.actor, case.task_id, case.pk
    built = [_series(tmp_path, 801 + i, 5) for i in range(3)]

    async def hand_over() -> None:
        for series in built:
            await actor.deliver_ready(task_id, str(series.directory))

    asyncio.run(hand_over())
    # The Unpacker commits while the queue still sends; the stage then waits for it.
    _finish_unpacking(sqlite_sessions, task_id, built)
    actor.handle(task_id)
    assert _destination(sqlite_sessions, pk) == ("done", 15, 15)
    dcmtk_storescp.wait_received(15)
    assert dcmtk_storescp.store_request_count() == 15
    assert actor._early == {}


def test_when_everything_went_early_the_stage_opens_no_association(
    case: Case, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    actor, task_id, pk = case.actor, case.task_id, case.pk
    built = [_series(tmp_path, 801 + i, 2) for i in range(2)]
    for series in built:
        actor._deliver_early(task_id, series.directory)
    _finish_unpacking(sqlite_sessions, task_id, built)
    actor.handle(task_id)
    assert _destination(sqlite_sessions, pk) == ("done", 4, 4)
    assert dcmtk_storescp.association_count() == 2  # one per early series, none for the stage
    with sqlite_sessions() as session:
        logged = session.scalars(select(AssociationLog.instances).order_by(AssociationLog.id))
        assert list(logged) == [2, 2]


def test_a_series_handed_over_again_while_it_is_sent_goes_once(
    case: Case, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    # An Unpacker restarted mid-task rebuilds a series (same UIDs) and hands it over again,
    # maybe while the first early job still sends it: the second starts from what it recorded.
    actor, task_id = case.actor, case.task_id
    series = _series(tmp_path, 801, 30)

    async def twice() -> None:
        for _ in range(2):
            await actor.deliver_ready(task_id, str(series.directory))

    asyncio.run(twice())
    wait(actor._early[task_id])
    dcmtk_storescp.wait_received(30)
    assert dcmtk_storescp.store_request_count() == 30
    assert _acknowledged(sqlite_sessions) == 30


def test_a_task_that_never_reaches_sending_leaves_nothing_queued(
    case: Case, sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    actor = case.actor
    first, second = _series(tmp_path, 801, 2), _series(tmp_path, 802, 2)
    asyncio.run(actor.deliver_ready(case.task_id, str(first.directory)))
    wait(actor._early[case.task_id])
    with unit_of_work(sqlite_sessions) as session:  # it fails before the Sending stage
        task = get_task(case.task_id, session=session, lock=True)
        move_to(task, Stage.UNPACKING, session=session, state=State.FAILED)
    other = make_task(sqlite_sessions, stage=Stage.UNPACKING, state=State.ACTIVE)
    asyncio.run(actor.deliver_ready(other, str(second.directory)))
    assert list(actor._early) == [other]  # the failed task's finished jobs are forgotten


def test_a_task_no_longer_unpacking_is_not_sent_early(
    case: Case, sqlite_sessions: sessionmaker[Session], dcmtk_storescp: StoreSCP, tmp_path: Path
) -> None:
    actor, task_id, pk = case.actor, case.task_id, case.pk
    series = _series(tmp_path, 801, 2)
    with unit_of_work(sqlite_sessions) as session:
        task = get_task(task_id, session=session, lock=True)
        move_to(task, Stage.UNPACKING, session=session, state=State.CANCELLED)
    actor._deliver_early(task_id, series.directory)
    assert _acknowledged(sqlite_sessions) == 0
    assert dcmtk_storescp.store_request_count() == 0
    assert _destination(sqlite_sessions, pk)[0] == "waiting"


def test_a_destination_that_is_down_leaves_the_early_delivery_to_the_stage(
    settings: Settings, sqlite_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    from tests.support.peers import free_port

    task_id = make_task(sqlite_sessions, stage=Stage.UNPACKING, state=State.ACTIVE)
    with unit_of_work(sqlite_sessions) as session:
        row = TaskDestination(
            task_id=task_id, name="down", ae_title="DOWN", host="127.0.0.1", port=free_port()
        )
        session.add(row)
        session.flush()
        pk = row.id
    actor = store_scu(sqlite_sessions, settings)
    actor._deliver_early(task_id, _series(tmp_path, 801, 2).directory)  # does not raise
    assert _destination(sqlite_sessions, pk) == ("waiting", 0, 0)


def test_only_a_task_the_check_can_hold_waits_for_its_verdict() -> None:
    record = Quant(
        suv_factor=None,
        suv_reason="no weight",
        body_threshold_bqml=1.0,
        received={},
        check=QuantCheck(status="pending"),
    )
    on = QuantThresholds(max_activity_change_pct=10.0, max_suvmax_change_pct=None)
    off = QuantThresholds(max_activity_change_pct=None, max_suvmax_change_pct=None)
    assert can_hold(record, on)
    assert not can_hold(record, off)
    assert not can_hold(None, on)  # packed before issue 15: nothing to compare with
