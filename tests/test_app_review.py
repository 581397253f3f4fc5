"""Hold for review in the console, the REST API and the configuration (issue 15)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, SiteConfig
from petray.domain import Stage, State
from petray.imaging.quant import ActivityMetrics, QuantThresholds
from petray.site.users import create_api_token, get_user_by_name
from petray.stages.records import Quant
from petray.stages.review import hold, judge, received_record
from petray.tasks import get_task
from tests.support.app import AppHarness, build_harness, csrf_of, make_task

RECEIVED = ActivityMetrics(10000.0, 9000.0, (5, 6, 7), 2000.0, 70000.0, 400.0)
DERIVED = ActivityMetrics(5000.0, 4600.0, (5, 6, 7), 1950.0, 71000.0, 431.0)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[AppHarness]:
    yield from build_harness(tmp_path)


def held(h: AppHarness, *, factor: float | None = 0.0005) -> str:
    task_id = make_task(h.sessions, stage=Stage.UNPACKING, state=State.ACTIVE)
    record = received_record(
        RECEIVED, suv_factor=factor, suv_reason="no weight", body_threshold=100.0
    )
    quant = judge(record, [("#1001 Denoised", 1001, DERIVED)], QuantThresholds(5, 30))
    with unit_of_work(h.sessions) as session:
        task = get_task(task_id, session=session)
        quant.put(task)
        hold(task, session=session)
    return task_id


def bearer(h: AppHarness, role: str) -> dict[str, str]:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name(role, session=session)
        assert user is not None
        return {"Authorization": f"Bearer {create_api_token(user, session=session)[1]}"}


def test_task_page_shows_the_table_breaches_and_the_buttons(harness: AppHarness) -> None:
    task_id = held(harness)
    harness.login("viewer")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert 'id="quant-table"' in page and 'id="held-reason"' in page
    assert "#1001 Denoised: total activity changed by +7.8 % (limit 5 %)" in page
    assert "SUVmax changed by -50.0 %" in page
    assert page.count('class="num breach"') == 2  # total activity and SUVmax
    assert "(+7.8 %)" in page and "5.00" in page  # received SUVmax 10000 x 0.0005
    assert "/release" not in page  # a viewer decides nothing
    harness.login("operator")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert f'action="/tasks/{task_id}/release"' in page and 'id="reject-form"' in page


def test_no_weight_shows_activity_and_the_reason(harness: AppHarness) -> None:
    task_id = held(harness, factor=None)
    harness.login("viewer")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert "SUV not computed: no weight" in page and "Max (kBq/ml)" in page
    assert "maximum activity concentration changed by -50.0 %" in page


def test_release_from_the_console_resumes_sending(harness: AppHarness) -> None:
    task_id = held(harness)
    harness.login("operator")
    token = csrf_of(harness.client.get(f"/tasks/{task_id}").text)
    harness.client.post(f"/tasks/{task_id}/release", data={"csrf_token": token})
    with unit_of_work(harness.sessions) as session:
        task = get_task(task_id, session=session)
        assert (task.stage, task.state) == (Stage.SENDING, State.ACTIVE)
        assert Quant.of(task).check.by == "operator"
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.action, e.actor) for e in events][-1] == ("task.release", "operator")
    assert ("resume", task_id) in harness.pipeline.calls


def test_reject_over_the_api_fails_with_the_reason_and_is_audited(harness: AppHarness) -> None:
    task_id = held(harness)
    viewer = harness.client.post(
        f"/api/v1/tasks/{task_id}/reject", json={}, headers=bearer(harness, "viewer")
    )
    assert viewer.status_code == 403
    operator = bearer(harness, "operator")
    assert harness.client.post(f"/api/v1/tasks/{task_id}/release", headers=operator).json()[
        "state"
    ] == ("active")
    again = harness.client.post(f"/api/v1/tasks/{task_id}/reject", headers=operator)
    assert again.status_code == 409  # released already: nothing left to reject
    task_id = held(harness)
    response = harness.client.post(
        f"/api/v1/tasks/{task_id}/reject", json={"reason": "lesion lost"}, headers=operator
    )
    assert response.json()["state"] == "failed"
    detail = harness.client.get(f"/api/v1/tasks/{task_id}", headers=operator).json()
    assert detail["reason"].startswith(
        "rejected after quantitative review by operator: #1001 Denoised: total activity"
    )
    assert detail["reason"].endswith("(lesion lost)")
    assert detail["quant"]["check"]["status"] == "rejected"
    assert detail["quant"]["series"][0]["change_pct"]["total_mbq"] == pytest.approx(7.75)
    with unit_of_work(harness.sessions) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "task.reject")).one()
        assert event.actor == "operator" and event.detail["reason"] == detail["reason"]
    assert ("resume", task_id) not in harness.pipeline.calls


def test_quant_settings_in_api_and_console(harness: AppHarness) -> None:
    admin = bearer(harness, "admin")
    for bad in (
        {"quant_max_activity_change_pct": 0},
        {"quant_max_suvmax_change_pct": -3},
        {"quant_max_activity_change_pct": "x"},
    ):
        assert harness.client.put("/api/v1/config", json=bad, headers=admin).status_code == 422
    body = {"quant_max_activity_change_pct": 5, "require_patient_weight": True}
    shown = harness.client.put("/api/v1/config", json=body, headers=admin).json()
    assert shown["quant_max_activity_change_pct"] == 5
    assert shown["quant_max_suvmax_change_pct"] is None and shown["require_patient_weight"]
    # Absent leaves a limit as it is; an explicit null turns it off.
    assert (
        harness.client.put("/api/v1/config", json={"min_images": 4}, headers=admin).json()[
            "quant_max_activity_change_pct"
        ]
        == 5
    )
    off = {"quant_max_activity_change_pct": None}
    assert (
        harness.client.put("/api/v1/config", json=off, headers=admin).json()[
            "quant_max_activity_change_pct"
        ]
        is None
    )
    harness.login("admin")
    token = csrf_of(harness.client.get("/config").text)
    bad = harness.client.post(
        "/config/quant", data={"csrf_token": token, "quant_max_suvmax_change_pct": "0"}
    )
    assert bad.status_code == 422 and 'id="e-quant_max_suvmax_change_pct"' in bad.text
    harness.client.post(
        "/config/quant",
        data={"csrf_token": token, "quant_max_suvmax_change_pct": "30"},
    )
    with unit_of_work(harness.sessions) as session:
        config = session.get(SiteConfig, 1)
        assert config is not None
        assert config.quant_max_suvmax_change_pct == 30
        assert config.require_patient_weight is False  # the unchecked box
    page = harness.client.get("/config").text
    assert 'id="f-quant_max_suvmax_change_pct" value="30.0"' in page
    harness.client.post(
        "/config/quant",
        data={"csrf_token": token, "quant_max_suvmax_change_pct": ""},
    )
    with unit_of_work(harness.sessions) as session:
        config = session.get(SiteConfig, 1)
        assert config is not None and config.quant_max_suvmax_change_pct is None
