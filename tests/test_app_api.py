"""REST API: every endpoint's authentication and roles, validation errors, and behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.demo.tasks import PATIENT_NAME
from petray.domain import Stage, State
from petray.site.users import create_api_token, get_user_by_name
from tests.support.app import AppHarness, build_harness, make_task

ZERO = "0" * 32
# (method, path, minimum role, body): every REST endpoint except health (public).
ENDPOINTS = [
    ("GET", "/api/v1/me", "viewer", None),
    ("GET", "/api/v1/metrics/summary", "viewer", None),
    ("GET", "/api/v1/tasks", "viewer", None),
    ("GET", f"/api/v1/tasks/{ZERO}", "viewer", None),
    ("POST", f"/api/v1/tasks/{ZERO}/retry", "operator", None),
    ("POST", f"/api/v1/tasks/{ZERO}/restart", "operator", None),
    ("POST", f"/api/v1/tasks/{ZERO}/cancel", "operator", None),
    ("DELETE", f"/api/v1/tasks/{ZERO}", "operator", None),
    ("GET", "/api/v1/devices", "viewer", None),
    ("POST", "/api/v1/devices", "admin", {"name": "x"}),
    ("GET", "/api/v1/devices/999", "viewer", None),
    ("PATCH", "/api/v1/devices/999", "admin", {}),
    ("DELETE", "/api/v1/devices/999", "admin", None),
    ("POST", "/api/v1/devices/999/echo", "operator", None),
    ("GET", "/api/v1/filters", "viewer", None),
    ("POST", "/api/v1/filters", "operator", {}),
    ("GET", "/api/v1/filters/999", "viewer", None),
    ("PATCH", "/api/v1/filters/999", "operator", {}),
    ("DELETE", "/api/v1/filters/999", "operator", None),
    ("GET", "/api/v1/radiopharmaceuticals", "viewer", None),
    ("POST", "/api/v1/radiopharmaceuticals", "admin", {}),
    ("GET", "/api/v1/radiopharmaceuticals/999", "viewer", None),
    ("PATCH", "/api/v1/radiopharmaceuticals/999", "admin", {}),
    ("DELETE", "/api/v1/radiopharmaceuticals/999", "admin", None),
    ("GET", "/api/v1/config", "viewer", None),
    ("PUT", "/api/v1/config", "admin", {}),
    ("POST", "/api/v1/config/remote-test", "admin", None),
    ("GET", "/api/v1/activity", "viewer", None),
    ("GET", "/api/v1/activity/export.csv", "viewer", None),
    ("GET", "/api/v1/users", "admin", None),
    ("POST", "/api/v1/users", "admin", {}),
    ("GET", "/api/v1/users/999", "admin", None),
    ("PATCH", "/api/v1/users/999", "admin", {"role": "viewer"}),
    ("POST", "/api/v1/users/999/password", "admin", {"password": "long-enough-password"}),
    ("POST", "/api/v1/users/999/unlock", "admin", None),
    ("DELETE", "/api/v1/users/999", "admin", None),
    ("POST", "/api/v1/tokens", "viewer", {}),
    ("DELETE", "/api/v1/tokens/999", "viewer", None),
    ("GET", "/api/v1/audit", "admin", None),
    ("GET", "/api/v1/audit/export.jsonl", "admin", None),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppHarness, dict[str, str]]]:
    for h in build_harness(tmp_path_factory.mktemp("api")):
        tokens: dict[str, str] = {}
        with unit_of_work(h.sessions) as session:
            for role in RANK:
                user = get_user_by_name(role, session=session)
                assert user is not None
                tokens[role] = create_api_token(user, session=session)[1]
        yield h, tokens


def _call(client: TestClient, method: str, path: str, token: str | None, body: object) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs = {"json": body} if body is not None else {}
    return client.request(method, path, headers=headers, **kwargs).status_code  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "path", "role", "body"), ENDPOINTS)
def test_endpoint_auth(
    api: tuple[AppHarness, dict[str, str]], method: str, path: str, role: str, body: object
) -> None:
    h, tokens = api
    h.client.cookies.clear()
    assert _call(h.client, method, path, None, body) == 401
    assert _call(h.client, method, path, "ptr_not-a-token", body) == 401
    for other, rank in RANK.items():
        status = _call(h.client, method, path, tokens[other], body)
        if rank < RANK[role]:
            assert status == 403, (other, status)
        else:
            assert status not in (401, 403), (other, status)


def test_openapi_lists_the_api_and_docs_are_local(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, _ = api
    spec = h.client.get("/openapi.json").json()
    assert "/process_ready" in spec["paths"]
    assert "/api/v1/tasks/{task_id}/retry" in spec["paths"]
    docs = h.client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()
    assert h.client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200


def _bearer(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/v1/devices",
            {"name": "d", "ae_title": "A" * 17, "host": "h", "port": 104, "is_destination": True},
        ),
        (
            "/api/v1/devices",
            {"name": "d", "ae_title": "PACS", "host": "h", "port": 70000, "is_destination": True},
        ),
        ("/api/v1/devices", {"name": "d", "ae_title": "PACS", "host": "h", "port": 104}),
        ("/api/v1/filters", {"description": "x", "series_number": -1}),
        ("/api/v1/filters", {"description": "x", "series_number": 1, "noise_pct": 150}),
        ("/api/v1/filters", {"description": "x", "series_number": 1, "mode": "prepend"}),
        ("/api/v1/filters", {"description": "a\\b", "series_number": 1}),
        ("/api/v1/radiopharmaceuticals", {"name": "X", "nuclide": "F-18", "half_life_s": 0}),
    ],
)
def test_create_validation_errors(
    api: tuple[AppHarness, dict[str, str]], path: str, body: dict[str, object]
) -> None:
    h, tokens = api
    response = h.client.post(path, json=body, headers=_bearer(tokens, "admin"))
    assert response.status_code == 422


def test_config_validation_and_listener_reload(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    admin = _bearer(tokens, "admin")
    for body in (
        {"ae_title": ""},
        {"dicom_port": 0},
        {"remote_url": "ftp://x"},
        {"min_images": 0},
        {"unknown": 1},
    ):
        assert h.client.put("/api/v1/config", json=body, headers=admin).status_code == 422
    h.pipeline.calls.clear()
    response = h.client.put("/api/v1/config", json={"min_images": 3}, headers=admin)
    assert response.json()["min_images"] == 3
    assert ("reload_dicom_listener", None) not in h.pipeline.calls
    response = h.client.put(
        "/api/v1/config", json={"ae_title": "NEWAE", "dicom_port": 11200}, headers=admin
    )
    assert response.json()["ae_title"] == "NEWAE" and response.json()["dicom_port"] == 11200
    assert ("reload_dicom_listener", None) in h.pipeline.calls


def test_task_listing_filters_and_patient_names(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    failed = make_task(
        h.sessions,
        stage=Stage.SENDING,
        state=State.FAILED,
        calling_ae="CT_A",
        reason="destination refused",
    )
    make_task(h.sessions, stage=Stage.DONE, state=State.DONE, calling_ae="OTHER")
    listing = h.client.get(
        "/api/v1/tasks",
        params={"state": "failed", "sender": "ct_a"},
        headers=_bearer(tokens, "operator"),
    ).json()
    assert [t["id"] for t in listing["items"]] == [failed]
    assert listing["items"][0]["patient_name"] == PATIENT_NAME
    as_viewer = h.client.get(f"/api/v1/tasks/{failed}", headers=_bearer(tokens, "viewer"))
    assert as_viewer.json()["patient_name"] is None
    assert PATIENT_NAME not in as_viewer.text
    bad = h.client.get(
        "/api/v1/tasks", params={"state": "bogus"}, headers=_bearer(tokens, "viewer")
    )
    assert bad.status_code == 422
    bad = h.client.get("/api/v1/tasks", params={"page": 0}, headers=_bearer(tokens, "viewer"))
    assert bad.status_code == 422


def test_task_actions(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    op = _bearer(tokens, "operator")
    task_id = make_task(h.sessions, stage=Stage.PACKING, state=State.FAILED, reason="boom")
    h.pipeline.calls.clear()
    retried = h.client.post(f"/api/v1/tasks/{task_id}/retry", headers=op)
    assert retried.status_code == 200
    assert retried.json() == {"id": task_id, "stage": "packing", "state": "active"}
    assert h.pipeline.calls == [("resume", task_id)]
    again = h.client.post(f"/api/v1/tasks/{task_id}/retry", headers=op)
    assert again.status_code == 409  # active tasks are not retried
    assert h.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=op).json()["state"] == (
        "cancelled"
    )
    restarted = h.client.post(f"/api/v1/tasks/{task_id}/restart", headers=op).json()
    assert restarted["stage"] == "validating"
    assert h.client.delete(f"/api/v1/tasks/{task_id}", headers=op).status_code == 204
    assert h.client.get(f"/api/v1/tasks/{task_id}", headers=op).status_code == 404
    with unit_of_work(h.sessions) as session:
        assert session.get(Task, task_id) is None


def test_delete_removes_files(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    task_id = make_task(h.sessions, stage=Stage.DONE, state=State.DONE)
    out = Path(h.settings.output_dir) / task_id
    out.mkdir(parents=True)
    (out / "x.dcm").write_bytes(b"x")
    from petray.db.models import OutputSeries

    with unit_of_work(h.sessions) as session:
        session.add(
            OutputSeries(
                task_id=task_id,
                series_instance_uid="1.2",
                series_number=1,
                description="d",
                directory=str(out),
                instances=1,
            )
        )
    response = h.client.delete(f"/api/v1/tasks/{task_id}", headers=_bearer(tokens, "operator"))
    assert response.status_code == 204
    assert not out.exists()


def test_device_filter_radiopharmaceutical_crud(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    admin = _bearer(tokens, "admin")
    device = h.client.post(
        "/api/v1/devices",
        headers=admin,
        json={
            "name": "pacs",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": 104,
            "is_destination": True,
        },
    )
    assert device.status_code == 201
    dup = h.client.post(
        "/api/v1/devices",
        headers=admin,
        json={
            "name": "pacs",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": 104,
            "is_destination": True,
        },
    )
    assert dup.status_code == 409
    device_id = device.json()["id"]
    patched = h.client.patch(f"/api/v1/devices/{device_id}", headers=admin, json={"port": 1104})
    assert patched.json()["port"] == 1104
    echo = h.client.post(f"/api/v1/devices/{device_id}/echo", headers=admin)
    assert echo.status_code == 200 and echo.json()["ok"] is False  # nothing listens there
    assert h.client.delete(f"/api/v1/devices/{device_id}", headers=admin).status_code == 204

    filt = h.client.post(
        "/api/v1/filters",
        headers=_bearer(tokens, "operator"),
        json={"description": "Gauss 4", "series_number": 902, "fwhm_mm": 4},
    )
    assert filt.status_code == 201 and filt.json()["enabled"] is True
    rp = h.client.post(
        "/api/v1/radiopharmaceuticals",
        headers=admin,
        json={
            "name": "Test-tracer",
            "nuclide": "F-18",
            "half_life_s": 6586.2,
            "synonyms": ["TT", " "],
        },
    )
    assert rp.status_code == 201 and rp.json()["synonyms"] == ["TT"]


def test_activity_and_metrics(api: tuple[AppHarness, dict[str, str]]) -> None:
    h, tokens = api
    make_task(h.sessions, calling_ae="=CMD()")
    viewer = _bearer(tokens, "viewer")
    entries = h.client.get("/api/v1/activity", params={"kind": "task"}, headers=viewer).json()
    assert entries and all(e["kind"] == "task" for e in entries)
    csv_text = h.client.get("/api/v1/activity/export.csv", headers=viewer).text
    assert csv_text.startswith("at,kind,who")
    assert "'=CMD()" in csv_text  # formula injection neutralised
    assert PATIENT_NAME not in csv_text
    summary = h.client.get("/api/v1/metrics/summary", headers=viewer).json()
    assert summary["actors"][0]["name"] == "compilator"
    assert summary["tasks_by_state"]
