"""Browser tests of the console for daily use (issue 11): API docs, the task list and page,
edit forms, the log page, and the screenshots in docs/.

Same set-up as test_browser.py (Debian's Chromium, Playwright, the app on uvicorn with the
FakePipeline), with the site's time zone set to Europe/Madrid.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import select

from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent, Radiopharmaceutical, Task
from petray.domain import Stage, State
from petray.logfile import install_log_file
from petray.site.users import create_api_token, get_user_by_name
from petray.tasks import get_task, move_to
from tests.support.app import PASSWORDS, build_harness, make_task
from tests.test_browser import CHROMIUM, Served, _login, browser, page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

__all__ = ["browser", "page"]  # fixtures, imported for pytest
ZONE = "Europe/Madrid"
SCREENSHOT_DIR_ENV = "PETRAY_SCREENSHOT_DIR"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    for harness in build_harness(tmp_path_factory.mktemp("console"), timezone=ZONE):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = harness.client.app
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        try:
            yield Served(harness, f"http://127.0.0.1:{port}")
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


def rich_task(
    served: Served,
    *,
    name: str = "Doe^Jane",
    patient_id: str = "",
    accession: str = "",
    study_date: str = "20261202",
    description: str = "WB FDG",
    **fields: Any,
) -> str:
    """A task whose patient and study carry what a technologist looks for."""
    task_id = make_task(served.harness.sessions, patient_name=name, **fields)
    with unit_of_work(served.harness.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None
        study = task.series.study
        study.accession_number = accession or f"A{task_id[:7]}"
        study.study_date = study_date
        task.series.description = description
        if patient_id:
            task.series.study.patient.patient_id = patient_id
    return task_id


def _set(served: Served, task_id: str, stage: Stage, state: State) -> None:
    with unit_of_work(served.harness.sessions) as session:
        move_to(get_task(task_id, session=session), stage, session=session, state=state)


def _state(served: Served, task_id: str) -> tuple[str, str] | None:
    with unit_of_work(served.harness.sessions) as session:
        task = session.get(Task, task_id)
        return None if task is None else (task.stage, task.state)


def _token(served: Served, role: str) -> str:
    with unit_of_work(served.harness.sessions) as session:
        user = get_user_by_name(role, session=session)
        assert user is not None
        return create_api_token(user, session=session, label="docs test")[1]


def test_docs_render_openapi_31_and_try_it_out_with_a_token(page: Page, served: Served) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("/docs")
    # The operations list, not Swagger UI's "Unable to render this definition".
    expect(page.locator(".opblock-tag-section").first).to_be_visible()
    expect(page.locator(".opblock-summary-path[data-path='/api/v1/tasks']").first).to_be_visible()
    assert page.locator("text=Unable to render this definition").count() == 0
    expect(page.locator(".info .title")).to_contain_text("petray")

    page.click("button.authorize")
    page.fill(".auth-container input[type=text]", _token(served, "viewer"))
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")

    operation = page.locator("#operations-tasks-api_list_tasks_api_v1_tasks_get")
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table .response .response-col_status").first
    expect(status).to_have_text(re.compile(r"^\s*200"))
    expect(operation.locator(".live-responses-table .microlight").first).to_contain_text('"total"')
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_task_list_shows_patient_study_and_local_times(page: Page, served: Served) -> None:
    task_id = rich_task(served, patient_id="MRN-4711", accession="ACC0815", name="Roe^Richard^J")
    rich_task(served, patient_id="MRN-0001", accession="ACC0001", name="Other^Person")
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/tasks")
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row).to_contain_text("Roe, Richard J")
    expect(row).to_contain_text("MRN-4711")
    expect(row).to_contain_text("ACC0815")
    expect(row).to_contain_text("2026-12-02")
    assert "Roe^Richard" not in page.content()
    # Times in the site's zone, the zone shown in the header.
    expect(page.locator("#task-table thead")).to_contain_text(re.compile(r"Received.*\(CES?T\)"))
    with unit_of_work(served.harness.sessions) as session:
        created = get_task(task_id, session=session).created
    from zoneinfo import ZoneInfo

    expect(row).to_contain_text(created.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M"))

    page.fill("#filter-patient-id", "MRN-4711")
    page.click("#task-filters button[type=submit]")
    expect(page.locator("tbody tr[data-task]")).to_have_count(1)
    page.goto("/tasks?accession=ACC0001")
    expect(page.locator("tbody tr[data-task]")).to_have_count(1)
    expect(page.locator("tbody tr[data-task]")).to_contain_text("Other, Person")

    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-patient")).to_contain_text("Roe, Richard J (ID MRN-4711)")
    expect(page.locator("#task-received")).to_contain_text(re.compile(r"CES?T$"))


def test_the_list_refreshes_itself_and_pauses_while_the_user_selects(
    page: Page, served: Served
) -> None:
    task_id = rich_task(served, stage=Stage.PACKING, state=State.ACTIVE)
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/tasks")
    page.evaluate("window.__notReloaded = true")
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row).to_contain_text("packing")
    expect(page.locator("#live-note")).to_be_visible()
    started = time.monotonic()
    _set(served, task_id, Stage.SENDING, State.ACTIVE)
    expect(row).to_contain_text("sending", timeout=5_000)
    assert time.monotonic() - started < 5
    assert page.evaluate("window.__notReloaded") is True  # swapped in place, no reload

    row.locator("input[name=ids]").check()
    expect(page.locator("#bulk-count")).to_have_text("1 selected:")
    _set(served, task_id, Stage.DONE, State.DONE)
    expect(page.locator("#live-paused")).to_be_visible()
    page.wait_for_timeout(3_000)  # two refresh periods: nothing may change under the user
    expect(row.locator(".state")).to_have_text("active")
    row.locator("input[name=ids]").uncheck()
    expect(row.locator(".state")).to_have_text("done", timeout=5_000)


def test_a_task_page_follows_its_task_until_it_ends(page: Page, served: Served) -> None:
    task_id = rich_task(served, stage=Stage.UNPACKING, state=State.ACTIVE)
    _login(page, "viewer", PASSWORDS["viewer"])
    page.goto(f"/tasks/{task_id}")
    page.evaluate("window.__notReloaded = true")
    expect(page.locator("#task-stage")).to_have_text("unpacking")
    _set(served, task_id, Stage.DONE, State.DONE)
    expect(page.locator("#task-state")).to_have_text("done", timeout=5_000)
    expect(page.locator("#task-stage")).to_have_text("done")
    assert page.evaluate("window.__notReloaded") is True
    # A final task is not fetched again: nothing changes once it has ended.
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.wait_for_timeout(3_000)
    assert not [url for url in requests if url.endswith(f"/tasks/{task_id}")], requests


def test_bulk_retry_and_delete_with_confirmation(page: Page, served: Served) -> None:
    failed = [
        rich_task(served, stage=Stage.UPLOADING, state=State.FAILED, reason="service down")
        for _ in range(2)
    ]
    done = rich_task(served, stage=Stage.DONE, state=State.DONE)
    questions: list[str] = []
    page.on("dialog", lambda dialog: questions.append(dialog.message))
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/tasks?state=failed")
    page.check("#select-all")
    for task_id in failed:
        expect(page.locator(f"tr[data-task='{task_id}'] input[name=ids]")).to_be_checked()
    page.click("#bulk-form button[value=retry]")
    expect(page.locator(".flash")).to_contain_text("tasks retried.")
    assert any(re.search(r"Retry \d+ tasks", q) for q in questions), questions
    for task_id in failed:
        assert _state(served, task_id) == ("uploading", "active")
        assert ("resume", task_id) in served.harness.pipeline.calls
    # Back on the filtered list as it was.
    expect(page).to_have_url(re.compile(r"state=failed"))

    page.goto("/tasks?state=done")
    page.locator(f"tr[data-task='{done}'] input[name=ids]").check()
    page.click("#bulk-form button[value=delete]")
    expect(page.locator(".flash")).to_contain_text("1 task deleted.")
    assert any("cannot be undone" in q for q in questions)
    assert _state(served, done) is None

    # A task that cannot take the action is skipped with the reason; the others go ahead.
    finished = rich_task(served, stage=Stage.DONE, state=State.DONE)
    page.goto("/tasks?state=done")
    page.locator(f"tr[data-task='{finished}'] input[name=ids]").check()
    page.click("#bulk-form button[value=retry]")
    expect(page.locator(".flash.warn")).to_contain_text("0 tasks retried. 1 skipped")
    with unit_of_work(served.harness.sessions) as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.target.in_([f"task {i}" for i in failed]))
        ).all()
    assert sorted(actions) == ["task.retry", "task.retry"]


def test_a_failure_is_worded_for_a_technologist(page: Page, served: Served) -> None:
    task_id = rich_task(
        served,
        stage=Stage.VALIDATING,
        state=State.FAILED,
        reason="header incomplete: unknown radiopharmaceutical 'FLT'",
    )
    _login(page, "viewer", PASSWORDS["viewer"])
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#failure-reason")).to_contain_text(
        "The tracer 'FLT' is not in the radiopharmaceutical table"
    )
    expect(page.locator("#failure-todo")).to_contain_text("under Radiopharmaceuticals")
    page.goto("/tasks?state=failed")
    expect(page.locator(f"tr[data-task='{task_id}'] td.reason")).to_contain_text("tracer 'FLT'")


@pytest.mark.parametrize(("width", "height"), [(1024, 768), (1280, 800), (1440, 900)])
def test_the_task_list_fits_the_screen(
    browser: Browser, served: Served, width: int, height: int
) -> None:
    for _ in range(3):
        rich_task(
            served,
            name="Vandenberghe-Oosterhuis^Maximiliaan^Alexander",
            description="PET WB MAC Q.Clear 2mm long description",
            stage=Stage.VALIDATING,
            state=State.FAILED,
            reason="header incomplete: unknown radiopharmaceutical 'Fluoroestradiol F18'; "
            "patient weight (PatientWeight) missing",
        )
    context = browser.new_context(
        base_url=served.base_url, viewport={"width": width, "height": height}
    )
    try:
        page = context.new_page()
        _login(page, "admin", PASSWORDS["admin"])
        for path in ("/tasks", "/logs"):
            page.goto(path)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} at {width} px overflows by {overflow} px"
        table = page.evaluate(
            "(() => { const w = document.querySelector('.table-wrap');"
            " return w ? w.scrollWidth - w.clientWidth : 0 })()"
        )
        assert table <= 0, f"the task table scrolls at {width} px"
    finally:
        context.close()


def test_edit_a_filter_and_series_numbers_stay_unique(page: Page) -> None:
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/filters")
    for description, number in (("Gauss 4mm", "601"), ("Gauss 6mm", "602")):
        page.fill("#f-description", description)
        page.fill("#f-series_number", number)
        page.fill("#f-fwhm_mm", "4")
        page.click("#filter-form button[type=submit]")
        expect(page.locator("#filters")).to_contain_text(description)
    page.fill("#f-description", "Same number")
    page.fill("#f-series_number", "601")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#e-series_number")).to_contain_text(
        "series number 601 is already used by filter 'Gauss 4mm'"
    )
    row = page.locator("#filters tr", has_text="Gauss 6mm")
    row.get_by_role("link", name="Edit").click()
    expect(page.locator("#filter-form")).to_be_visible()
    expect(page.locator("#f-series_number")).to_have_value("602")
    page.fill("#f-fwhm_mm", "6")
    page.fill("#f-series_number", "601")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#e-series_number")).to_contain_text("already used")
    page.fill("#f-series_number", "603")
    page.click("#filter-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("saved")
    expect(page.locator("#filters tr", has_text="Gauss 6mm")).to_contain_text("603")


def test_edit_a_radiopharmaceutical(page: Page, served: Served) -> None:
    with unit_of_work(served.harness.sessions) as session:
        session.add(
            Radiopharmaceutical(name="FLT", nuclide="F-18", half_life_s=6586.0, synonyms=[])
        )
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/radiopharmaceuticals")
    row = page.locator("tr[data-radiopharmaceutical='FLT']")
    row.get_by_role("link", name="Edit").click()
    page.fill("#f-synonyms", "fluorothymidine, 18F-FLT")
    page.click("#radiopharmaceutical-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Radiopharmaceutical FLT saved.")
    expect(row).to_contain_text("fluorothymidine, 18F-FLT")
    with unit_of_work(served.harness.sessions) as session:
        found = session.scalar(
            select(AuditEvent).where(AuditEvent.action == "radiopharmaceutical.update")
        )
        assert found is not None and found.actor == "admin"


def test_admin_changes_the_client_id(page: Page, served: Served) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/config")
    expect(page.locator("#site #f-client_id")).to_have_value("petray-site")
    page.fill("#site #f-client_id", "has space")
    page.click("#site-form button[type=submit]")
    expect(page.locator("#site #e-client_id")).to_contain_text("pattern")
    page.fill("#site #f-client_id", "hospital-a")
    page.click("#site-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Saved.")
    expect(page.locator("#site #f-client_id")).to_have_value("hospital-a")
    with unit_of_work(served.harness.sessions) as session:
        change = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "config.update")
        ).all()[-1]
        assert change.detail["changed"]["client_id"]["to"] == "hospital-a"
    page.context.clear_cookies()
    _login(page, "viewer", PASSWORDS["viewer"])
    page.goto("/config")
    expect(page.locator("#site #f-client_id")).to_be_disabled()


def test_a_device_host_must_be_a_host(page: Page) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/devices")
    page.fill("#f-name", "typo")
    page.fill("#f-ae_title", "TYPO")
    page.fill("#f-host", "not a host!!")
    page.fill("#f-port", "104")
    page.check("input[name=is_destination]")
    page.click("#device-form button[type=submit]")
    expect(page.locator("#e-host")).to_contain_text("is not a host name")
    assert page.locator("tr[data-device='typo']").count() == 0


@pytest.fixture
def gateway_log(served: Served) -> Iterator[Path]:
    """Lines in the harness's PETRAY_HOME/logs/petray.log, written through the real handler."""
    handler = install_log_file(served.harness.home)
    log = logging.getLogger("actors.test_console")
    try:
        log.info("task 1a2b3c4d moved to packing")
        log.warning("destination PACS@10.0.0.5:104 refused the association")
        log.error("uploader: service unreachable for task 9f8e7d6c")
        log.info("received series from SCANNER1 for patient Doe^Jane")
        handler.flush()
        yield Path(handler.baseFilename)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_log_page_tails_filters_and_downloads(page: Page, gateway_log: Path) -> None:
    _login(page, "operator", PASSWORDS["operator"])
    assert page.request.get("/logs").status == 403
    page.context.clear_cookies()
    _login(page, "admin", PASSWORDS["admin"])
    page.click("nav a:has-text('Log')")
    lines = page.locator("#log-lines")
    expect(lines).to_contain_text("task 1a2b3c4d moved to packing")
    expect(lines).to_contain_text("refused the association")
    assert "Doe" not in lines.inner_text() and "Jane" not in lines.inner_text()
    expect(lines).to_contain_text("for patient [name]")
    page.select_option("#log-level", "WARNING")
    page.click("#log-filters button[type=submit]")
    expect(lines.locator("tr")).to_have_count(2)
    expect(lines).not_to_contain_text("moved to packing")
    page.fill("#log-text", "9f8e7d6c")
    page.click("#log-filters button[type=submit]")
    expect(lines.locator("tr")).to_have_count(1)
    with page.expect_download() as info:
        page.click("#log-download")
    text = Path(info.value.path()).read_text()
    assert info.value.suggested_filename.startswith("petray-")
    assert text.strip().endswith("service unreachable for task 9f8e7d6c")
    assert len(text.strip().splitlines()) == 1


def test_screenshots_for_the_readme(
    browser: Browser, served: Served, gateway_log: Path, tmp_path: Path
) -> None:
    """The task list, a task page and the log page at 1440 and 1024 px, as PNG files.

    Written to PETRAY_SCREENSHOT_DIR when set (``docs/`` for the README), else to tmp_path.
    """
    out = Path(os.environ.get(SCREENSHOT_DIR_ENV) or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shown = _screenshot_tasks(served)
    written = []
    for width, height in ((1440, 900), (1024, 768)):
        context = browser.new_context(
            base_url=served.base_url, viewport={"width": width, "height": height}
        )
        try:
            page = context.new_page()
            _login(page, "admin", PASSWORDS["admin"])
            for name, path in (
                ("tasks", "/tasks?page_size=12"),
                ("task", f"/tasks/{shown}"),
                ("log", "/logs"),
            ):
                page.goto(path)
                page.wait_for_load_state("networkidle")
                target = out / f"console-{name}-{width}.png"
                page.screenshot(path=str(target))
                written.append(target)
        finally:
            context.close()
    for target in written:
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _screenshot_tasks(served: Served) -> str:
    """A believable day: done, sending, waiting and failed tasks from two scanners."""
    people = [
        ("Garcia^Lucia", "MRN-20417", "WB FDG", Stage.DONE, State.DONE, ""),
        ("Okafor^Chidi", "MRN-20418", "WB FDG", Stage.SENDING, State.ACTIVE, ""),
        ("Lindqvist^Anna", "MRN-20419", "Brain FDG", Stage.PROCESSING, State.WAITING, ""),
        (
            "Moreau^Jean^Paul",
            "MRN-20420",
            "WB PSMA",
            Stage.VALIDATING,
            State.FAILED,
            "header incomplete: unknown radiopharmaceutical 'PSMA-1007'",
        ),
        ("Tanaka^Yui", "MRN-20421", "WB FDG", Stage.DONE, State.DONE, ""),
    ]
    ids = []
    for name, mrn, description, stage, state, reason in people:
        ids.append(
            rich_task(
                served,
                name=name,
                patient_id=mrn,
                description=description,
                stage=stage,
                state=state,
                reason=reason,
                calling_ae="PETCT_1" if len(ids) % 2 else "PETMR_2",
                images=223,
            )
        )
    return ids[3]
