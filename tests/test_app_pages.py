"""Console pages: rendering, roles, viewer without patient names, form errors, actions, MIPs."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from sqlalchemy import select

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, Device, Instance, OutputSeries, Task
from petray.demo.synth import make_pet_series, write_series
from petray.demo.tasks import PATIENT_NAME
from petray.domain import Stage, State
from petray.ports import ActorStatus
from petray.retry import Backoff, RetryPolicy
from petray.tasks import add_note, record_transient_failure
from tests.support.app import AppHarness, csrf_of, harness, make_task

__all__ = ["harness"]
PAGES = [
    "/",
    "/tasks",
    "/devices",
    "/filters",
    "/radiopharmaceuticals",
    "/config",
    "/activity",
    "/account",
    "/users",
]
EXTERNAL = re.compile(r'(?:src|href)="(?:https?:)?//(?!127\.0\.0\.1:8265)')


def test_every_page_renders_with_local_assets_only(harness: AppHarness) -> None:
    make_task(harness.sessions)
    harness.login("admin")
    for path in PAGES:
        response = harness.client.get(path)
        assert response.status_code == 200, path
        assert not EXTERNAL.search(response.text), path
        # Every form carries the session's CSRF token (macros imported without context lose it).
        posts = response.text.count('method="post"')
        assert posts == response.text.count('name="csrf_token" value="'), path
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert harness.client.get("/static/app.css").status_code == 200


def test_dashboard_shows_actors_remote_and_disk(harness: AppHarness) -> None:
    harness.pipeline.actors[-1] = ActorStatus(name="store_scu", alive=False)
    harness.login("viewer")
    page = harness.client.get("/").text
    assert "compilator" in page and "down" in page  # store_scu is reported down
    assert "unreachable" in page  # nothing listens on the test remote URL
    assert "MB free" in page
    assert "127.0.0.1:8265" in page


def test_viewer_sees_no_patient_names_and_no_forms(harness: AppHarness) -> None:
    task_id = make_task(harness.sessions, stage=Stage.SENDING, state=State.FAILED, reason="x")
    harness.login("viewer")
    for path in ("/tasks", f"/tasks/{task_id}", "/activity", "/activity/export.csv"):
        response = harness.client.get(path)
        assert response.status_code == 200
        assert PATIENT_NAME not in response.text, path
        assert "Doe, Jane" not in response.text, path
        assert f"P{task_id}" not in response.text, path  # the patient id neither
    task_page = harness.client.get(f"/tasks/{task_id}").text
    assert "Retry" not in task_page
    assert 'action="/devices"' not in harness.client.get("/devices").text
    token = csrf_of(harness.client.get("/filters").text)
    for path, data in [
        (f"/tasks/{task_id}/retry", {}),
        ("/filters", {"description": "x", "series_number": "1"}),
        ("/devices", {"name": "d"}),
        ("/config/listener", {"ae_title": "X", "dicom_port": "104"}),
    ]:
        response = harness.client.post(path, data={**data, "csrf_token": token})
        assert response.status_code == 403, path
    assert harness.pipeline.calls.count(("resume", task_id)) == 0


def test_operator_sees_patient_names(harness: AppHarness) -> None:
    make_task(harness.sessions)
    harness.login("operator")
    # Issue 11: as people write names, not as DICOM stores them.
    assert "Doe, Jane" in harness.client.get("/tasks").text


def test_tasks_list_filters_sorts_and_paginates(harness: AppHarness) -> None:
    for i in range(7):
        make_task(harness.sessions, calling_ae=f"AE{i}", state=State.DONE, stage=Stage.DONE)
    failed = make_task(harness.sessions, calling_ae="BAD", state=State.FAILED, stage=Stage.PACKING)
    harness.login("viewer")
    page = harness.client.get("/tasks", params={"page_size": 3, "sort": "sender", "order": "asc"})
    assert "page 1 of 3" in page.text
    assert page.text.index("AE0") < page.text.index("AE1")
    only_failed = harness.client.get("/tasks", params={"state": "failed"}).text
    assert failed[:8] in only_failed and "AE3" not in only_failed


def test_device_form_shows_errors_next_to_fields(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/devices").text)
    response = harness.client.post(
        "/devices",
        data={
            "csrf_token": token,
            "name": "pacs",
            "ae_title": "WAY_TOO_LONG_AE_TITLE",
            "host": "127.0.0.1",
            "port": "99999",
            "is_destination": "true",
        },
    )
    assert response.status_code == 422
    assert 'id="e-ae_title"' in response.text and 'id="e-port"' in response.text
    assert 'value="WAY_TOO_LONG_AE_TITLE"' in response.text  # the input is kept
    ok = harness.client.post(
        "/devices",
        data={
            "csrf_token": token,
            "name": "pacs",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": "104",
            "is_destination": "true",
        },
    )
    assert ok.status_code == 200 and "Device pacs added." in ok.text


def test_filter_form_errors(harness: AppHarness) -> None:
    harness.login("operator")
    token = csrf_of(harness.client.get("/filters").text)
    response = harness.client.post(
        "/filters",
        data={"csrf_token": token, "description": "", "series_number": "x", "noise_pct": "101"},
    )
    assert response.status_code == 422
    for name in ("description", "series_number", "noise_pct"):
        assert f'id="e-{name}"' in response.text


def test_config_listener_applies_and_reloads(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/config").text)
    bad = harness.client.post(
        "/config/listener", data={"csrf_token": token, "ae_title": "", "dicom_port": "0"}
    )
    assert bad.status_code == 422 and 'id="e-ae_title"' in bad.text
    assert ("reload_dicom_listener", None) not in harness.pipeline.calls
    ok = harness.client.post(
        "/config/listener", data={"csrf_token": token, "ae_title": "GW2", "dicom_port": "11300"}
    )
    assert ok.status_code == 200 and 'value="GW2"' in ok.text
    assert ("reload_dicom_listener", None) in harness.pipeline.calls
    thresholds = harness.client.post(
        "/config/thresholds",
        data={
            "csrf_token": token,
            "min_images": "5",
            "slice_gap_tolerance": "2",
            "inactivity_wait_s": "3",
            "abort_timeout_s": "60",
            "reply_to_sender": "true",
        },
    )
    assert 'value="5"' in thresholds.text
    test = harness.client.post("/config-remote-test", data={"csrf_token": token})
    assert 'id="remote-test"' in test.text and "unreachable" in test.text


def test_task_page_timeline_and_actions(harness: AppHarness) -> None:
    task_id = make_task(
        harness.sessions,
        stage=Stage.UPLOADING,
        state=State.FAILED,
        reason="remote service unreachable",
    )
    harness.login("operator")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert "remote service unreachable" in page and "compiling" in page
    token = csrf_of(page)
    after = harness.client.post(f"/tasks/{task_id}/retry", data={"csrf_token": token})
    assert after.status_code == 200 and "retry done" in after.text
    assert harness.pipeline.calls[-1] == ("resume", task_id)
    with unit_of_work(harness.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None and (task.stage, task.state) == ("uploading", "active")
    deleted = harness.client.post(f"/tasks/{task_id}/delete", data={"csrf_token": token})
    assert "were deleted" in deleted.text
    assert harness.client.get(f"/tasks/{task_id}").status_code == 404


def test_mip_previews_render_pngs(harness: AppHarness, tmp_path: Path) -> None:
    task_id = make_task(harness.sessions, stage=Stage.DONE, state=State.DONE)
    source = write_series(make_pet_series(slices=10, rows=32, cols=32), tmp_path / "src")
    out_dir = tmp_path / "out"
    write_series(make_pet_series(slices=10, rows=32, cols=32, seed=2), out_dir)
    with unit_of_work(harness.sessions) as session:
        series_pk = session.get(Task, task_id).series_pk  # type: ignore[union-attr]
        for i, path in enumerate(source):
            session.add(
                Instance(
                    series_pk=series_pk,
                    task_id=task_id,
                    sop_instance_uid=f"1.{i}",
                    path=str(path),
                    slice_position=float(i),
                )
            )
        output = OutputSeries(
            task_id=task_id,
            series_instance_uid="1.2.9",
            series_number=901,
            description="Gauss",
            directory=str(out_dir),
            instances=10,
        )
        session.add(output)
        session.flush()
        output_id = output.id
    harness.login("viewer")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert f"/tasks/{task_id}/mip/output/{output_id}.png" in page
    for url in (f"/tasks/{task_id}/mip/source.png", f"/tasks/{task_id}/mip/output/{output_id}.png"):
        response = harness.client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size[1] == 320
    assert harness.client.get(f"/tasks/{task_id}/mip/output/999.png").status_code == 404


def test_activity_page_and_csv(harness: AppHarness) -> None:
    with unit_of_work(harness.sessions) as session:
        session.add(
            AssociationLog(
                calling_ae="MODALITY1",
                called_ae="PETRAY",
                peer_host="127.0.0.1",
                instances=47,
                outcome="ok",
            )
        )
    make_task(harness.sessions)
    harness.login("viewer")
    page = harness.client.get("/activity", params={"kind": "association"}).text
    assert "MODALITY1" in page and "task processing" not in page
    csv_text = harness.client.get("/activity/export.csv").text
    assert "MODALITY1" in csv_text and "task processing" in csv_text


def test_device_edit_form(harness: AppHarness) -> None:
    harness.login("admin")
    token = csrf_of(harness.client.get("/devices").text)
    for name in ("pacs", "other"):
        harness.client.post(
            "/devices",
            data={
                "csrf_token": token,
                "name": name,
                "ae_title": name.upper(),
                "host": "127.0.0.1",
                "port": "104",
                "is_destination": "true",
            },
        )
    with unit_of_work(harness.sessions) as session:
        device_id = session.scalars(select(Device.id).where(Device.name == "pacs")).one()
    form = harness.client.get(f"/devices/{device_id}/edit").text
    assert f'action="/devices/{device_id}/edit"' in form and 'value="PACS"' in form
    edit = {
        "csrf_token": token,
        "name": "pacs",
        "ae_title": "PACS2",
        "host": "10.0.0.5",
        "port": "11112",
        "is_source": "true",
    }
    clash = harness.client.post(f"/devices/{device_id}/edit", data={**edit, "name": "other"})
    assert clash.status_code == 422 and 'id="e-name"' in clash.text
    no_role = {k: v for k, v in edit.items() if k != "is_source"}
    neither = harness.client.post(f"/devices/{device_id}/edit", data=no_role)
    assert neither.status_code == 422 and "source, a destination or both" in neither.text
    saved = harness.client.post(f"/devices/{device_id}/edit", data=edit)
    assert saved.status_code == 200 and "Device pacs saved." in saved.text
    with unit_of_work(harness.sessions) as session:
        device = session.get(Device, device_id)
        assert device is not None
        # The unchecked destination box means "not a destination any more".
        assert (device.ae_title, device.host, device.port) == ("PACS2", "10.0.0.5", 11112)
        assert (device.is_source, device.is_destination) == (True, False)
    harness.client.cookies.clear()
    harness.login("operator")
    assert harness.client.get(f"/devices/{device_id}/edit").status_code == 403


def test_a_retrying_task_shows_as_a_warning_with_attempts_error_and_next_attempt(
    harness: AppHarness,
) -> None:
    # Issue 8: never a green banner with "Attempts 0" while retries run.
    task_id = make_task(harness.sessions, stage=Stage.SENDING, state=State.WAITING)
    with unit_of_work(harness.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None
        policy = RetryPolicy(backoff=Backoff(base_s=30, cap_s=60, jitter=0), budget_s=3600)
        now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
        for _ in range(3):
            record_transient_failure(
                task,
                "PACS@10.0.0.9:104: connection refused",
                policy=policy,
                now=now,
                session=session,
            )
        add_note(task, "NumberOfSlices says 12 images but more arrived")
    harness.login("viewer")
    page = harness.client.get(f"/tasks/{task_id}").text
    assert 'class="flash warn" id="waiting-reason"' in page
    assert "next attempt at 08:01:00 UTC" in page
    assert 'id="retry-attempts">3 — last error: PACS@10.0.0.9:104: connection refused' in page
    assert "Note: NumberOfSlices says 12" in page
    api = harness.client.get(f"/api/v1/tasks/{task_id}").json()
    assert api["retry_attempts"] == 3
    assert api["last_error"] == "PACS@10.0.0.9:104: connection refused"
    assert api["next_attempt_at"].startswith("2026-12-01T08:01:00")
    assert api["notes"] == ["NumberOfSlices says 12 images but more arrived"]
