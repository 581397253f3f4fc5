"""The audit trail through the HTTP app: what people, tokens and the service did is recorded, with
who, from where and what; admins read it (page, API, JSON lines); it never holds patient names."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, Device, PostFilter
from petray.demo.tasks import PATIENT_NAME
from petray.domain import Stage, State
from petray.site import audit
from petray.site.users import create_api_token, get_user_by_name
from tests.support.app import (
    CALLBACK_TOKEN,
    PASSWORDS,
    AppHarness,
    build_harness,
    harness,
    login,
    make_task,
    page_csrf,
)

__all__ = ["harness"]
CALLBACK = {"Authorization": f"Bearer {CALLBACK_TOKEN}"}


def _token(h: AppHarness, role: str) -> dict[str, str]:
    with unit_of_work(h.sessions) as session:
        user = get_user_by_name(role, session=session)
        assert user is not None
        clear = create_api_token(user, session=session)[1]
    return {"Authorization": f"Bearer {clear}"}


def _events(h: AppHarness, **where: Any) -> list[AuditEvent]:
    with unit_of_work(h.sessions) as session:
        stmt = select(AuditEvent).order_by(AuditEvent.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(AuditEvent, name) == value)
        return list(session.scalars(stmt))


def _one(h: AppHarness, action: str) -> AuditEvent:
    found = _events(h, action=action)
    assert len(found) == 1, (action, [(e.action, e.target) for e in _events(h)])
    return found[0]


def test_logins_logouts_and_failures_are_recorded(harness: AppHarness) -> None:
    client = harness.client
    login(client, "operator", "wrong-password-1")
    failed = _one(harness, "login.failed")
    assert (failed.actor, failed.outcome, failed.source) == ("operator", "refused", "testclient")
    assert "wrong-password-1" not in json.dumps(failed.detail)
    harness.login("operator")
    ok = _one(harness, "login")
    assert (ok.actor, ok.target, ok.outcome) == ("operator", "user operator", "ok")
    client.post("/logout", data={"csrf_token": page_csrf(client)})
    assert _one(harness, "logout").actor == "operator"


def test_table_changes_by_token_and_console_are_recorded(harness: AppHarness) -> None:
    admin = _token(harness, "admin")
    device = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    created = harness.client.post(
        "/api/v1/devices", json={**device, "is_destination": True}, headers=admin
    ).json()
    harness.client.patch(f"/api/v1/devices/{created['id']}", json={"port": 105}, headers=admin)
    harness.client.delete(f"/api/v1/devices/{created['id']}", headers=admin)
    create, update, delete = (_one(harness, f"device.{a}") for a in ("create", "update", "delete"))
    assert create.actor == "admin" and create.detail["via"] == "token"
    assert create.detail["values"]["ae_title"] == "PACS"
    assert update.detail["changed"] == {"port": 105}
    assert delete.target == "Device pacs" and delete.detail["id"] == created["id"]
    # A refused change (a duplicate name) is not an event: nothing changed.
    harness.client.post("/api/v1/devices", json={**device, "is_source": True}, headers=admin)
    harness.client.post("/api/v1/devices", json={**device, "is_source": True}, headers=admin)
    assert len(_events(harness, action="device.create")) == 2

    client = harness.login("admin")
    with unit_of_work(harness.sessions) as session:
        row = PostFilter(description="Gauss 4", series_number=901, fwhm_mm=4.0)
        session.add(row)
        session.flush()
        filter_id = row.id
    client.post(f"/filters/{filter_id}/toggle", data={"csrf_token": page_csrf(client)})
    toggled = _one(harness, "filter.update")
    assert toggled.detail == {"via": "console", "id": filter_id, "changed": {"enabled": False}}
    client.post(
        "/users",
        data={
            "csrf_token": page_csrf(client),
            "name": "carol",
            "password": "violet-canyon-77",
            "role": "viewer",
        },
    )
    new_user = _one(harness, "user.create")
    assert new_user.target == "User carol"
    assert "violet-canyon-77" not in json.dumps(new_user.detail)
    assert "password" not in new_user.detail["values"]


def test_config_tokens_and_user_actions_are_recorded(harness: AppHarness) -> None:
    admin = _token(harness, "admin")
    harness.client.put("/api/v1/config", json={"min_images": 20}, headers=admin)
    config = _one(harness, "config.update")
    assert config.detail["changed"] == {"min_images": {"from": 10, "to": 20}}
    harness.client.put("/api/v1/config", json={"min_images": 20}, headers=admin)
    assert len(_events(harness, action="config.update")) == 1  # nothing changed the 2nd time
    token = harness.client.post("/api/v1/tokens", json={"label": "backup"}, headers=admin).json()
    harness.client.delete(f"/api/v1/tokens/{token['id']}", headers=admin)
    assert _one(harness, "token.create").target == f"token {token['id']}"
    assert _one(harness, "token.revoke").actor == "admin"
    with unit_of_work(harness.sessions) as session:
        viewer = get_user_by_name("viewer", session=session)
        assert viewer is not None
        viewer_id = viewer.id
    harness.client.post(f"/api/v1/users/{viewer_id}/unlock", headers=admin)
    harness.client.post(
        f"/api/v1/users/{viewer_id}/password", json={"password": "copper-lagoon-88"}, headers=admin
    )
    assert _one(harness, "user.unlock").target == "User viewer"
    assert "copper-lagoon-88" not in json.dumps(_one(harness, "user.password").detail)


def test_task_actions_and_callbacks_are_recorded_without_patient_names(
    harness: AppHarness,
) -> None:
    op = _token(harness, "operator")
    failed = make_task(harness.sessions, stage=Stage.PACKING, state=State.FAILED, reason="x")
    harness.client.post(f"/api/v1/tasks/{failed}/retry", headers=op)
    harness.client.post(f"/api/v1/tasks/{failed}/cancel", headers=op)
    harness.client.post(f"/api/v1/tasks/{failed}/restart", headers=op)
    harness.client.post(f"/api/v1/tasks/{failed}/retry", headers=op)  # 409: active, no event
    waiting = make_task(harness.sessions, stage=Stage.PROCESSING, state=State.WAITING)
    harness.client.post("/process_ready", json={"task_id": waiting}, headers=CALLBACK)
    harness.client.post("/process_ready", json={"task_id": waiting}, headers=CALLBACK)
    harness.client.post("/process_ready", json={"task_id": "0" * 32}, headers=CALLBACK)
    harness.client.post("/process_ready", json={"task_id": waiting}, headers={})
    client = harness.login("operator")
    client.post(f"/tasks/{failed}/delete", data={"csrf_token": page_csrf(client)})

    retry = _events(harness, action="task.retry")
    assert len(retry) == 1
    assert (retry[0].actor, retry[0].target) == ("operator", f"task {failed}")
    assert retry[0].detail["before"] == "packing/failed"
    assert _one(harness, "task.cancel").detail["after"] == "packing/cancelled"
    assert _one(harness, "task.restart").detail["after"] == "validating/active"
    assert _one(harness, "task.delete").detail["via"] == "console"
    callbacks = [(e.actor, e.target, e.outcome) for e in _events(harness, action="callback")]
    assert callbacks == [
        ("service", f"task {waiting}", "accepted"),
        ("service", f"task {waiting}", "repeat"),
        ("service", f"task {'0' * 32}", "unknown task"),
        ("", "", "unauthorized"),
    ]
    assert all(e.source == "testclient" for e in _events(harness, action="callback"))

    # Issue 10: no patient names anywhere in the trail.
    family = PATIENT_NAME.split("^")[0]
    with unit_of_work(harness.sessions) as session:
        rows = list(session.scalars(select(AuditEvent)))
    assert len(rows) >= 9
    for row in rows:
        text = json.dumps([row.actor, row.source, row.action, row.target, row.outcome, row.detail])
        assert family not in text, row.action


def test_admins_read_filter_and_export_the_trail(harness: AppHarness) -> None:
    admin = _token(harness, "admin")
    with unit_of_work(harness.sessions) as session:
        audit.record("task.delete", session=session, actor="bob", target="task abc")
        audit.record("device.update", session=session, actor="alice", target="Device pacs")
        audit.record("device.delete", session=session, actor="alice", target="Device old")
    listed = harness.client.get("/api/v1/audit", params={"actor": "alice"}, headers=admin)
    assert [e["action"] for e in listed.json()] == ["device.delete", "device.update"]
    by_target = harness.client.get("/api/v1/audit", params={"target": "pacs"}, headers=admin)
    assert [e["actor"] for e in by_target.json()] == ["alice"]
    by_action = harness.client.get("/api/v1/audit", params={"action": "task"}, headers=admin)
    assert [e["target"] for e in by_action.json()] == ["task abc"]
    today = harness.client.get("/api/v1/audit", params={"date_from": "2000-01-01"}, headers=admin)
    assert len(today.json()) == 3
    assert harness.client.get("/api/v1/audit", headers=_token(harness, "operator")).status_code == (
        403
    )

    export = harness.client.get(
        "/api/v1/audit/export.jsonl", params={"actor": "alice"}, headers=admin
    )
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in export.headers["content-disposition"]
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [line["action"] for line in lines] == ["device.update", "device.delete"]

    client = harness.login("admin")
    page = client.get("/audit", params={"actor": "alice"})
    assert page.status_code == 200
    assert "Device old" in page.text and "task abc" not in page.text
    assert 'href="/audit"' in page.text  # in the menu for admins
    assert client.get("/audit/export.jsonl").text.count("\n") >= 3
    operator = harness.login("operator")
    assert operator.get("/audit").status_code == 403
    assert 'href="/audit"' not in operator.get("/tasks").text


@pytest.fixture
def syslog_app(tmp_path: Path) -> Iterator[tuple[AppHarness, socket.socket]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    spec = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield from ((h, sock) for h in build_harness(tmp_path, audit_syslog=spec))
    finally:
        handler = audit.configure_syslog(spec)
        assert handler is not None
        audit.trail.removeHandler(handler)
        handler.close()
        sock.close()


def test_a_login_reaches_the_configured_syslog(
    syslog_app: tuple[AppHarness, socket.socket],
) -> None:
    h, sock = syslog_app
    client: TestClient = h.client
    login(client, "admin", PASSWORDS["admin"])
    datagram = sock.recv(65536).decode()
    line = json.loads(datagram.split("petray-audit: ", 1)[1].rstrip("\x00"))
    assert (line["action"], line["actor"], line["source"]) == ("login", "admin", "testclient")


def test_devices_from_the_command_line_are_recorded(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from petray.cli import main

    monkeypatch.setenv("PETRAY_HOME", str(harness.home))
    monkeypatch.setenv("PETRAY_DATABASE_URL", str(harness.sessions.kw["bind"].url))
    argv = ["device", "add", "scanner", "--ae-title", "PET1", "--host", "10.0.0.9", "--port", "104"]
    assert main([*argv, "--source"]) == 0
    assert main(["device", "remove", "scanner"]) == 0
    created, removed = _one(harness, "device.create"), _one(harness, "device.delete")
    assert created.detail["via"] == "cli" and created.target == "Device scanner"
    assert removed.source == "cli"
    with unit_of_work(harness.sessions) as session:
        assert session.scalars(select(Device)).all() == []
