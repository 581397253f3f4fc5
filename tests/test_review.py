"""Hold for review (issue 15): the verdict, release, reject, and what the pipeline resumes."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.domain import FINAL_STATES, Stage, State
from petray.errors import InvalidTransition
from petray.imaging.quant import ActivityMetrics, QuantThresholds
from petray.site.siteconfig import get_site_config
from petray.stages.records import Quant
from petray.stages.review import (
    hold,
    judge,
    must_hold,
    received_record,
    reject,
    release,
    site_thresholds,
    summary_lines,
)
from petray.tasks import get_task, retry, runnable_in, summarize, unfinished_tasks
from tests.test_tasks import make_task

RECEIVED = ActivityMetrics(10000.0, 9000.0, (5, 6, 7), 2000.0, 70000.0, 400.0)


def smoothed(total: float, maximum: float) -> ActivityMetrics:
    return ActivityMetrics(maximum, maximum * 0.9, (5, 6, 7), 1900.0, 71000.0, total)


def record(factor: float | None = 0.0005) -> dict[str, object]:
    return received_record(
        RECEIVED, suv_factor=factor, suv_reason="no weight", body_threshold=123.0
    )


def test_judge_passes_holds_or_is_off() -> None:
    derived = [("#1001 Denoised", 1001, smoothed(total=430.0, maximum=9500.0))]
    held = judge(record(), derived, QuantThresholds(max_activity_change_pct=5))
    assert held.check.status == "held"
    assert held.check.breaches == ("#1001 Denoised: total activity changed by +7.5 % (limit 5 %)",)
    [row] = held.series
    assert row["change_pct"]["total_mbq"] == pytest.approx(7.5)
    assert row["suv_max"] == pytest.approx(9500 * 0.0005)
    assert held.received["suv_max"] == pytest.approx(5.0)
    assert judge(record(), derived, QuantThresholds(10, 30)).check.status == "passed"
    off = judge(record(), derived, QuantThresholds())
    assert off.check.status == "off"
    assert off.series[0]["change_pct"]["total_mbq"] == pytest.approx(7.5)


def test_no_weight_keeps_activity_and_says_why() -> None:
    quant = judge(record(factor=None), [("#1", 1, RECEIVED)], QuantThresholds())
    assert quant.suv_reason == "no weight"
    assert quant.received["suv_max"] is None
    assert quant.received["total_mbq"] == 400.0
    assert quant.series[0]["suv_peak"] is None


def held_task(session: Session) -> str:
    task = make_task(session, Stage.UNPACKING)
    derived = [("#1001 Denoised", 1001, smoothed(total=430.0, maximum=9500.0))]
    judge(record(), derived, QuantThresholds(max_activity_change_pct=5)).put(task)
    assert must_hold(task)
    hold(task, session=session)
    return task.id


def test_held_task_is_not_final_and_not_resumed(sessions: sessionmaker[Session]) -> None:
    assert State.HELD not in FINAL_STATES
    with unit_of_work(sessions) as session:
        task_id = held_task(session)
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == (Stage.SENDING, State.HELD)
        assert task.reason.startswith("held for quantitative review: #1001 Denoised: total")
        assert task_id not in [t for t, _ in unfinished_tasks(session=session)]
        assert task_id not in [t for t, _ in runnable_in((Stage.SENDING,), session=session)]
        summary = summarize(task).as_dict()
        assert summary["quant"]["check"]["status"] == "held"
        with pytest.raises(InvalidTransition, match="only failed tasks"):
            retry(task_id, session=session)


def test_release_sends_as_usual(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = held_task(session)
    with unit_of_work(sessions) as session:
        release(task_id, session=session, by="alice")
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state, task.reason) == (Stage.SENDING, State.ACTIVE, "")
        assert task_id in [t for t, _ in runnable_in((Stage.SENDING,), session=session)]
        check = Quant.of(task).check
        assert (check.status, check.by) == ("released", "alice")
        assert task.events[-1].message == "released after review by alice"
        with pytest.raises(InvalidTransition, match="only a task held"):
            release(task_id, session=session, by="alice")


def test_reject_fails_with_the_breaches_and_a_retry_checks_again(
    sessions: sessionmaker[Session],
) -> None:
    with unit_of_work(sessions) as session:
        task_id = held_task(session)
    with unit_of_work(sessions) as session:
        reject(task_id, session=session, by="bob", note="hot spot gone")
    with unit_of_work(sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == (Stage.SENDING, State.FAILED)
        assert task.reason == (
            "rejected after quantitative review by bob: #1001 Denoised: total activity "
            "changed by +7.5 % (limit 5 %) (hot spot gone)"
        )
        assert Quant.of(task).check.status == "rejected"
        # A retry never sends the rejected series: they are made and checked again.
        assert retry(task_id, session=session) == Stage.UNPACKING


def test_release_or_reject_only_a_held_task(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        task_id = make_task(session, Stage.SENDING).id
    with unit_of_work(sessions) as session, pytest.raises(InvalidTransition):
        reject(task_id, session=session, by="bob")


def test_site_thresholds_default_off(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        assert site_thresholds(session=session).off
        config = get_site_config(session=session)
        config.quant_max_activity_change_pct = 5.0
    with unit_of_work(sessions) as session:
        assert site_thresholds(session=session) == QuantThresholds(5.0, None)


def test_summary_lines_show_each_volume_its_changes_and_the_verdict() -> None:
    received = ActivityMetrics(10000.0, 9000.0, (5, 6, 7), 2000.0, 70000.0, 400.0)
    derived = ActivityMetrics(9000.0, 8600.0, (5, 6, 7), 1950.0, 71000.0, 440.0)
    record = received_record(received, suv_factor=0.0002, suv_reason="", body_threshold=1.0)
    held = judge(record, [("#7 Denoised", 7, derived)], QuantThresholds(5, None))
    assert summary_lines(held) == [
        "received: SUVmax 2, SUVpeak 1.8, SUVmean 0.4, total 400.0 MBq",
        "#7 Denoised: SUVmax 1.8 (-10.0 %), SUVpeak 1.72 (-4.4 %), SUVmean 0.39 (-2.5 %), "
        "total 440.0 MBq (+10.0 %)",
        "check: held; #7 Denoised: total activity changed by +10.0 % (limit 5 %)",
    ]
    no_weight = received_record(received, suv_factor=None, suv_reason="no weight", body_threshold=1)
    lines = summary_lines(judge(no_weight, [("#7 Denoised", 7, derived)], QuantThresholds()))
    assert lines[1] == "#7 Denoised: max 9000 Bq/ml (-10.0 %), total 440.0 MBq (+10.0 %)"
    assert lines[-1] == "check: off; no SUV: no weight"
