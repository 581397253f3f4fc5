"""Browser tests: Debian's Chromium driven by Playwright against the app served by uvicorn.

The app runs with the FakePipeline (no Ray); the echo test talks to a real DCMTK storescp.
The whole pipeline (a task sent by storescu going through to done) is in test_browser_pipeline.py.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.demo.tasks import PATIENT_NAME
from petray.domain import Stage, State
from petray.ports import ActorStatus
from tests.support.app import PASSWORDS, AppHarness, build_harness, make_task
from tests.support.peers import start_storescp

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
# Imported after the skip: without Playwright the module is skipped, not an import error.
pytest.importorskip("playwright.sync_api")
from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


class Served:
    def __init__(self, harness: AppHarness, base_url: str) -> None:
        self.harness = harness
        self.base_url = base_url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    for harness in build_harness(tmp_path_factory.mktemp("browser")):
        app = harness.client.app
        # Bound here, handed to uvicorn: no window in which another process takes the port.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    context = browser.new_context(base_url=served.base_url)
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirm() of destructive actions
    yield page
    context.close()


def _login(page: Page, name: str, password: str) -> None:
    page.goto("/login")
    page.fill("#username", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_first_login_reaches_the_dashboard(page: Page) -> None:
    page.goto("/tasks")
    expect(page).to_have_url(re.compile(r"/login\?next=/tasks"))
    _login(page, "admin", PASSWORDS["admin"])
    expect(page.locator("h1")).to_have_text(re.compile("Dashboard"))
    expect(page.locator("header .who")).to_contain_text("admin")


def test_dashboard_shows_a_failing_check(page: Page, served: Served) -> None:
    actors = served.harness.pipeline.actors
    healthy = list(actors)
    actors[:] = [ActorStatus(name="store_scp", alive=False, listening=False)]
    try:
        _login(page, "viewer", PASSWORDS["viewer"])
        expect(page.locator("#health-status")).to_have_text("down")
        expect(page.locator("#health .problems")).to_contain_text("not listening")
        expect(page.locator("#actors")).to_contain_text("store_scp down")
        expect(page.locator("#health-status")).to_have_css("background-color", "rgb(180, 35, 24)")
    finally:
        actors[:] = healthy


def test_wrong_password_shows_an_error(page: Page) -> None:
    _login(page, "admin", "definitely-wrong")
    expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_viewer_cannot_change_anything(page: Page, served: Served) -> None:
    task_id = make_task(
        served.harness.sessions, stage=Stage.PACKING, state=State.FAILED, reason="disk full"
    )
    _login(page, "viewer", PASSWORDS["viewer"])
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#failure-reason")).to_contain_text("disk full")
    assert page.locator("button", has_text="Retry").count() == 0
    assert PATIENT_NAME not in page.content()
    for path, form in (("/devices", "#device-form"), ("/filters", "#filter-form")):
        page.goto(path)
        assert page.locator(form).count() == 0
    page.goto("/config")
    assert page.locator("#f-ae_title").is_disabled()
    # Even a hand-made post with a valid CSRF token is refused for a viewer.
    token = page.locator("input[name=csrf_token]").first.input_value()
    response = page.request.post(f"/tasks/{task_id}/retry", form={"csrf_token": token})
    assert response.status == 403


def test_create_destination_and_echo_it(page: Page, tmp_path: Path) -> None:
    with start_storescp(tmp_path) as scp:
        _login(page, "admin", PASSWORDS["admin"])
        page.goto("/devices")
        page.fill("#f-name", "pacs-test")
        page.fill("#f-ae_title", scp.aet)
        page.fill("#f-host", "127.0.0.1")
        page.fill("#f-port", str(scp.port))
        page.check("input[name=is_destination]")
        page.click("#device-form button[type=submit]")
        row = page.locator("tr[data-device='pacs-test']")
        expect(row).to_contain_text(scp.aet)
        row.locator("button", has_text="C-ECHO").click()
        expect(page.locator("#echo-result")).to_have_text("Echo OK")


def test_device_form_errors_are_shown_next_to_fields(page: Page) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/devices")
    page.fill("#f-name", "broken")
    page.fill("#f-ae_title", "THIS_AE_IS_TOO_LONG")
    page.fill("#f-host", "127.0.0.1")
    page.fill("#f-port", "104")
    page.check("input[name=is_destination]")
    page.click("#device-form button[type=submit]")
    expect(page.locator("#e-ae_title")).to_contain_text("1-16 characters")


def test_create_a_filter(page: Page) -> None:
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/filters")
    page.fill("#f-description", "Gauss 5mm")
    page.fill("#f-series_number", "905")
    page.fill("#f-fwhm_mm", "5")
    page.click("#filter-form button[type=submit]")
    expect(page.locator("#filters")).to_contain_text("Gauss 5mm")
    expect(page.locator("#filters")).to_contain_text("905")


def test_retry_a_failed_task(page: Page, served: Served) -> None:
    task_id = make_task(
        served.harness.sessions,
        stage=Stage.UPLOADING,
        state=State.FAILED,
        reason="remote service unreachable",
    )
    _login(page, "operator", PASSWORDS["operator"])
    page.goto(f"/tasks/{task_id}")
    page.click("button:has-text('Retry from uploading')")
    expect(page.locator(".flash")).to_contain_text("retry done")
    with unit_of_work(served.harness.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None and (task.stage, task.state) == ("uploading", "active")
    assert ("resume", task_id) in served.harness.pipeline.calls


def test_edit_a_device(page: Page) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/devices")
    page.fill("#f-name", "edit-me")
    page.fill("#f-ae_title", "EDITME")
    page.fill("#f-host", "127.0.0.1")
    page.fill("#f-port", "104")
    page.check("input[name=is_destination]")
    page.click("#device-form button[type=submit]")
    row = page.locator("tr[data-device='edit-me']")
    row.get_by_role("link", name="Edit").click()
    expect(page.locator("h2")).to_have_text("Edit device edit-me")
    expect(page.locator("#f-ae_title")).to_have_value("EDITME")
    page.fill("#f-port", "11113")
    page.click("#device-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Device edit-me saved.")
    expect(row).to_contain_text("11113")


def test_admin_manages_users(page: Page) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.click("nav a:has-text('Users')")
    expect(page).to_have_url(re.compile(r"/users$"))
    page.fill("#f-name", "nurse")
    page.select_option("#f-role", "operator")
    page.fill("#f-password", "too-short")
    page.click("#user-form button[type=submit]")
    expect(page.locator("#e-password")).to_contain_text("at least 12")
    expect(page.locator("#f-name")).to_have_value("nurse")
    page.fill("#f-password", "a-long-enough-password")
    page.click("#user-form button[type=submit]")
    row = page.locator("tr[data-user='nurse']")
    expect(row.locator("select[name=role]")).to_have_value("operator")
    row.locator("select[name=role]").select_option("viewer")
    row.get_by_role("button", name="Change").click()
    expect(page.locator(".flash")).to_contain_text("User nurse is now viewer.")
    row.get_by_role("button", name="Delete").click()  # confirm() is accepted by the fixture
    expect(page.locator(".flash")).to_contain_text("User nurse removed.")
    expect(row).to_have_count(0)
