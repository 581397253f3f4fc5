"""POST /process_ready per REMOTE_PROTOCOL.md, and the health endpoint."""

from __future__ import annotations

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.domain import Stage, State
from tests.support.app import CALLBACK_TOKEN, AppHarness, harness, make_task

__all__ = ["harness"]
AUTH = {"Authorization": f"Bearer {CALLBACK_TOKEN}"}


def _task(h: AppHarness, task_id: str) -> Task:
    with unit_of_work(h.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task


def test_callback_acknowledges_and_starts_download_once(harness: AppHarness) -> None:
    task_id = make_task(harness.sessions, stage=Stage.PROCESSING, state=State.WAITING)
    first = harness.client.post("/process_ready", json={"task_id": task_id}, headers=AUTH)
    assert first.status_code == 200
    assert first.json() == {"message": "Acknowledge"}
    assert _task(harness, task_id).stage == Stage.DOWNLOADING
    again = harness.client.post("/process_ready", json={"task_id": task_id}, headers=AUTH)
    assert again.status_code == 200
    assert again.json() == {"message": "Acknowledge"}
    assert harness.pipeline.calls == [("result_ready", task_id)]


def test_callback_bad_or_missing_token_is_401_and_changes_nothing(harness: AppHarness) -> None:
    task_id = make_task(harness.sessions)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": CALLBACK_TOKEN}):
        response = harness.client.post("/process_ready", json={"task_id": task_id}, headers=headers)
        assert response.status_code == 401
    # Even a malformed body gets 401 first: an unauthenticated caller learns nothing.
    response = harness.client.post(
        "/process_ready", content=b"{not json", headers={"Authorization": "Bearer wrong"}
    )
    assert response.status_code == 401
    assert _task(harness, task_id).stage == Stage.PROCESSING
    assert harness.pipeline.calls == []


def test_callback_unknown_task_404(harness: AppHarness) -> None:
    response = harness.client.post("/process_ready", json={"task_id": "0" * 32}, headers=AUTH)
    assert response.status_code == 404
    assert harness.pipeline.calls == []


def test_callback_task_not_waiting_409(harness: AppHarness) -> None:
    task_id = make_task(harness.sessions, stage=Stage.PACKING, state=State.ACTIVE)
    response = harness.client.post("/process_ready", json={"task_id": task_id}, headers=AUTH)
    assert response.status_code == 409
    failed = make_task(harness.sessions, stage=Stage.DOWNLOADING, state=State.FAILED)
    response = harness.client.post("/process_ready", json={"task_id": failed}, headers=AUTH)
    assert response.status_code == 409
    assert _task(harness, task_id).stage == Stage.PACKING
    assert harness.pipeline.calls == []


def test_callback_malformed_body_422(harness: AppHarness) -> None:
    for body in (b"{not json", b"{}", b'{"task_id": 5}', b'{"task_id": "../../etc"}'):
        response = harness.client.post(
            "/process_ready",
            content=body,
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert response.status_code == 422, body


def test_health_needs_no_login(harness: AppHarness) -> None:
    response = harness.client.get("/api/v1/health")
    assert response.status_code == 200
    # Nothing answers at the harness's remote URL: tasks would wait (tests/test_app_health.py).
    assert response.json()["status"] == "degraded"
    assert response.json()["database"] is True
