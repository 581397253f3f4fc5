"""Hold for review (issue 15): the quantitative check's record on a task, and its verdict.

The task's ``Quant`` record (petray.stages.records) keeps:

- ``suv_factor`` / ``suv_reason``: the SUVbw multiplier of the received series
  (petray.imaging.suv), or null and why not ("no weight", ...);
- ``body_threshold_bqml``: the body mask's threshold, taken from the received volume;
- ``received``: its metrics (petray.imaging.quant.report);
- ``series``: one row per derived series, its metrics and ``change_pct`` against the received;
- ``check``: ``status`` (pending, off, passed, held, released, rejected), ``breaches`` (texts),
  the ``thresholds`` applied, and who released or rejected it and when.

A task with a breach stops at Stage.SENDING in State.HELD; an operator releases it (it is
sent as usual) or rejects it (it fails with the reason). Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from petray.db.models import Task
from petray.domain import Stage, State
from petray.errors import InvalidTransition
from petray.imaging.quant import ActivityMetrics, QuantThresholds, changes, evaluate, report
from petray.site.siteconfig import get_site_config
from petray.stages.records import Quant, QuantCheck
from petray.tasks import fail, get_task, move_to

PENDING, OFF, PASSED = "pending", "off", "passed"
HELD, RELEASED, REJECTED = "held", "released", "rejected"
MAX_REASON_CHARS = 500


def site_thresholds(*, session: Session) -> QuantThresholds:
    config = get_site_config(session=session)
    return QuantThresholds(
        max_activity_change_pct=config.quant_max_activity_change_pct,
        max_suvmax_change_pct=config.quant_max_suvmax_change_pct,
    )


def received_record(
    metrics: ActivityMetrics, *, suv_factor: float | None, suv_reason: str, body_threshold: float
) -> Quant:
    """What the Packer stores: the received volume's numbers, the check still to come."""
    return Quant(
        suv_factor=suv_factor,
        suv_reason="" if suv_factor is not None else (suv_reason or "no SUV"),
        body_threshold_bqml=body_threshold,
        received=report(metrics, suv_factor),
        check=QuantCheck(status=PENDING),
    )


def judge(
    record: Quant,
    derived: Sequence[tuple[str, int, ActivityMetrics]],
    thresholds: QuantThresholds,
) -> Quant:
    """The record with each derived series (label, series number, metrics) and the verdict."""
    factor = record.suv_factor
    received = ActivityMetrics.from_dict(record.received)
    rows = [
        {
            "label": label,
            "series_number": number,
            **report(metrics, factor),
            "change_pct": changes(received, metrics),
        }
        for label, number, metrics in derived
    ]
    breaches = evaluate(
        received, {label: m for label, _, m in derived}, thresholds, suv=factor is not None
    )
    status = OFF if thresholds.off else HELD if breaches else PASSED
    check = QuantCheck(
        status=status, breaches=tuple(b.text for b in breaches), thresholds=asdict(thresholds)
    )
    return record.model_copy(update={"series": tuple(rows), "check": check})


def can_hold(record: Quant | None, thresholds: QuantThresholds) -> bool:
    """Whether the check may stop the task for review: it needs the received series' numbers
    (tasks packed before issue 15 have none) and a limit that is on. Until it is judged, such a
    task sends nothing."""
    return record is not None and not thresholds.off


def check_of(task: Task) -> QuantCheck | None:
    quant = Quant.find(task.details)
    return quant.check if quant is not None else None


def must_hold(task: Task) -> bool:
    check = check_of(task)
    return check is not None and check.status == HELD


def hold_reason(task: Task) -> str:
    check = check_of(task)
    breaches = "; ".join(check.breaches if check is not None else ())
    return f"held for quantitative review: {breaches}"[:MAX_REASON_CHARS]


def hold(task: Task, *, session: Session) -> None:
    move_to(task, Stage.SENDING, session=session, state=State.HELD, message=hold_reason(task))


def _decide(task: Task, status: str, by: str) -> list[str]:
    record = Quant.of(task)
    decided = {"status": status, "by": by, "at": datetime.now(UTC).isoformat()}
    record.model_copy(update={"check": record.check.model_copy(update=decided)}).put(task)
    return list(record.check.breaches)


def _held(task_id: str, *, session: Session) -> Task:
    task = get_task(task_id, session=session, lock=True)
    if task.state != State.HELD.value:
        raise InvalidTransition(
            f"task {task_id} is {task.state}; only a task held for review is released or rejected"
        )
    return task


def release(task_id: str, *, session: Session, by: str) -> Task:
    """Send the held task as it is; the caller tells the StoreSCU after the commit."""
    task = _held(task_id, session=session)
    _decide(task, RELEASED, by)
    move_to(task, Stage.SENDING, session=session, message=f"released after review by {by}")
    return task


def reject(task_id: str, *, session: Session, by: str, note: str = "") -> Task:
    """Fail the held task: its series are never sent (a retry makes and checks them again)."""
    task = _held(task_id, session=session)
    breaches = _decide(task, REJECTED, by)
    reason = f"rejected after quantitative review by {by}: {'; '.join(breaches)}"
    if note.strip():
        reason += f" ({note.strip()})"
    fail(task, reason[:MAX_REASON_CHARS], session=session)
    return task


def _figure(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _changed(row: Mapping[str, Any], metric: str) -> str:
    change = (row.get("change_pct") or {}).get(metric)
    return "" if change is None else f" ({change:+.1f} %)"


def summary_lines(quant: Quant) -> list[str]:
    """The check as a few lines of text (``petray demo``): one per volume, then the verdict."""
    record = quant.public()
    suv = record.get("suv_factor") is not None
    lines = []
    for row in [{"label": "received", **record["received"]}, *record.get("series", [])]:
        if suv:
            shown = f"SUVmax {_figure(row['suv_max'])}{_changed(row, 'max_bqml')}, "
            shown += f"SUVpeak {_figure(row['suv_peak'])}{_changed(row, 'peak_bqml')}, "
            shown += f"SUVmean {_figure(row['suv_mean'])}{_changed(row, 'mean_body_bqml')}"
        else:
            shown = f"max {_figure(row['max_bqml'], '.0f', ' Bq/ml')}{_changed(row, 'max_bqml')}"
        total = f"total {_figure(row['total_mbq'], '.1f', ' MBq')}{_changed(row, 'total_mbq')}"
        lines.append(f"{row['label']}: {shown}, {total}")
    check = record.get("check") or {}
    verdict = check.get("status", PENDING)
    if not suv:
        verdict += f"; no SUV: {record.get('suv_reason') or 'no SUV'}"
    lines.append(f"check: {verdict}" + "".join(f"; {b}" for b in check.get("breaches", [])))
    return lines
