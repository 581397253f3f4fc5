"""``petray tasks release|reject``, ``petray wait`` on a held task, the check's settings and
``petray tasks --json`` (issue 15) on their own home."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import AuditEvent
from petray.domain import Stage
from petray.imaging.quant import ActivityMetrics, QuantThresholds
from petray.stages.review import hold, judge, received_record
from petray.tasks import get_task
from tests.support.petray_cli import Cli, add_tasks

RECEIVED = ActivityMetrics(10000.0, 9000.0, (5, 6, 7), 2000.0, 70000.0, 400.0)
DERIVED = ActivityMetrics(9000.0, 8600.0, (5, 6, 7), 1950.0, 71000.0, 440.0)


def hold_tasks(cli: Cli) -> list[str]:
    """Both tasks of ``add_tasks``, held with a total activity change of +10 %."""
    engine = make_engine(f"sqlite:///{cli.home / 'petray.db'}")
    ids = list(add_tasks(cli.home / "petray.db"))
    record = received_record(RECEIVED, suv_factor=None, suv_reason="no weight", body_threshold=1)
    quant = judge(record, [("#7 Denoised", 7, DERIVED)], QuantThresholds(5, None))
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            for task_id in ids:
                task = get_task(task_id, session=session)
                quant.put(task)
                hold(task, session=session)
    finally:
        engine.dispose()
    return ids


def test_release_reject_wait_and_json(migrated: Cli) -> None:
    cli = migrated
    first, second = hold_tasks(cli)
    waited = cli("wait", first)
    assert waited.code == 5 and "sending held: held for quantitative review" in waited.out
    listed = {t["id"]: t for t in cli.ok("tasks", "--json").json()}
    quant = listed[first]["quant"]
    assert quant["check"]["status"] == "held" and quant["suv_reason"] == "no weight"
    assert quant["series"][0]["change_pct"]["total_mbq"] == pytest.approx(10.0)
    assert "released task" in cli.ok("tasks", "release", first).out
    cli.refused("task", "release", first, message="only a task held for review")
    rejected = cli.ok("task", "reject", second, "--reason", "artefact").out
    assert "rejected after quantitative review by" in rejected and "(artefact)" in rejected
    shown = cli.ok("task", "show", second, "--json").json()
    assert shown["state"] == "failed" and shown["stage"] == Stage.SENDING
    assert "#7 Denoised: total activity changed by +10.0 % (limit 5 %)" in shown["reason"]
    engine = make_engine(f"sqlite:///{cli.home / 'petray.db'}")
    try:
        with unit_of_work(make_sessionmaker(engine)) as session:
            assert get_task(first, session=session).state == "active"
            events = {
                e.action: e
                for e in session.scalars(select(AuditEvent).where(AuditEvent.source == "cli"))
            }
            assert events["task.release"].detail["after"] == "sending/active"
            assert events["task.reject"].detail["reason"] == shown["reason"]
    finally:
        engine.dispose()


def test_check_settings_from_the_shell(migrated: Cli) -> None:
    cli = migrated
    shown = cli.ok("config", "show", "--json").json()
    assert shown["quant_max_activity_change_pct"] is None
    assert shown["require_patient_weight"] is False
    changed = cli.ok("config", "set", "quant_max_activity_change_pct=5").out
    assert "quant_max_activity_change_pct: None -> 5.0" in changed
    cli.refused("config", "set", "quant_max_suvmax_change_pct=0", message="greater than 0")
    cli.ok("config", "set", "require_patient_weight=true")
    off = cli.ok("config", "set", "quant_max_activity_change_pct=off").out
    assert "quant_max_activity_change_pct: 5.0 -> None" in off
    shown = cli.ok("config", "show", "--json").json()
    assert shown["quant_max_activity_change_pct"] is None and shown["require_patient_weight"]
