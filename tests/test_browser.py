"""Browser tests: Debian's Chromium driven by Playwright against the app served by uvicorn.

The app runs with the FakePipeline (no Ray); the echo test talks to a real DCMTK storescp.
Still to come once the whole pipeline runs: a task sent by storescu going through to done.
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
from petray.domain import Stage, State
from tests.peers import start_storescp
from tests.test_app_helpers import PASSWORDS, PATIENT_NAME, AppHarness, build_harness, make_task

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
sync_api = pytest.importorskip("playwright.sync_api")


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
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, served: Served) -> Iterator[object]:
    context = browser.new_context(base_url=served.base_url)  # type: ignore[attr-defined]
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirm() of destructive actions
    yield page
    context.close()


def _login(page: object, name: str, password: str) -> None:
    p = page
    p.goto("/login")  # type: ignore[attr-defined]
    p.fill("#username", name)  # type: ignore[attr-defined]
    p.fill("#password", password)  # type: ignore[attr-defined]
    p.click("button[type=submit]")  # type: ignore[attr-defined]
    p.wait_for_load_state()  # type: ignore[attr-defined]


def test_first_login_reaches_the_dashboard(page: object) -> None:
    page.goto("/tasks")  # type: ignore[attr-defined]
    sync_api.expect(page).to_have_url(re.compile(r"/login\?next=/tasks"))
    _login(page, "admin", PASSWORDS["admin"])
    sync_api.expect(page.locator("h1")).to_have_text(re.compile("Dashboard"))  # type: ignore[attr-defined]
    sync_api.expect(page.locator("header .who")).to_contain_text("admin")  # type: ignore[attr-defined]


def test_wrong_password_shows_an_error(page: object) -> None:
    _login(page, "admin", "definitely-wrong")
    sync_api.expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")  # type: ignore[attr-defined]
    sync_api.expect(page).to_have_url(re.compile(r"/login$"))


def test_viewer_cannot_change_anything(page: object, served: Served) -> None:
    task_id = make_task(
        served.harness.sessions, stage=Stage.PACKING, state=State.FAILED, reason="disk full"
    )
    _login(page, "viewer", PASSWORDS["viewer"])
    page.goto(f"/tasks/{task_id}")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#failure-reason")).to_contain_text("disk full")  # type: ignore[attr-defined]
    assert page.locator("button", has_text="Retry").count() == 0  # type: ignore[attr-defined]
    assert PATIENT_NAME not in page.content()  # type: ignore[attr-defined]
    for path, form in (("/devices", "#device-form"), ("/filters", "#filter-form")):
        page.goto(path)  # type: ignore[attr-defined]
        assert page.locator(form).count() == 0  # type: ignore[attr-defined]
    page.goto("/config")  # type: ignore[attr-defined]
    assert page.locator("#f-ae_title").is_disabled()  # type: ignore[attr-defined]
    # Even a hand-made post with a valid CSRF token is refused for a viewer.
    token = page.locator("input[name=csrf_token]").first.input_value()  # type: ignore[attr-defined]
    response = page.request.post(f"/tasks/{task_id}/retry", form={"csrf_token": token})  # type: ignore[attr-defined]
    assert response.status == 403


def test_create_destination_and_echo_it(page: object, tmp_path: Path) -> None:
    with start_storescp(tmp_path) as scp:
        _login(page, "admin", PASSWORDS["admin"])
        page.goto("/devices")  # type: ignore[attr-defined]
        page.fill("#f-name", "pacs-test")  # type: ignore[attr-defined]
        page.fill("#f-ae_title", scp.aet)  # type: ignore[attr-defined]
        page.fill("#f-host", "127.0.0.1")  # type: ignore[attr-defined]
        page.fill("#f-port", str(scp.port))  # type: ignore[attr-defined]
        page.check("input[name=is_destination]")  # type: ignore[attr-defined]
        page.click("#device-form button[type=submit]")  # type: ignore[attr-defined]
        row = page.locator("tr[data-device='pacs-test']")  # type: ignore[attr-defined]
        sync_api.expect(row).to_contain_text(scp.aet)
        row.locator("button", has_text="C-ECHO").click()
        sync_api.expect(page.locator("#echo-result")).to_have_text("Echo OK")  # type: ignore[attr-defined]


def test_device_form_errors_are_shown_next_to_fields(page: object) -> None:
    _login(page, "admin", PASSWORDS["admin"])
    page.goto("/devices")  # type: ignore[attr-defined]
    page.fill("#f-name", "broken")  # type: ignore[attr-defined]
    page.fill("#f-ae_title", "THIS_AE_IS_TOO_LONG")  # type: ignore[attr-defined]
    page.fill("#f-host", "127.0.0.1")  # type: ignore[attr-defined]
    page.fill("#f-port", "104")  # type: ignore[attr-defined]
    page.check("input[name=is_destination]")  # type: ignore[attr-defined]
    page.click("#device-form button[type=submit]")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#e-ae_title")).to_contain_text("1-16 characters")  # type: ignore[attr-defined]


def test_create_a_filter(page: object) -> None:
    _login(page, "operator", PASSWORDS["operator"])
    page.goto("/filters")  # type: ignore[attr-defined]
    page.fill("#f-description", "Gauss 5mm")  # type: ignore[attr-defined]
    page.fill("#f-series_number", "905")  # type: ignore[attr-defined]
    page.fill("#f-fwhm_mm", "5")  # type: ignore[attr-defined]
    page.click("#filter-form button[type=submit]")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#filters")).to_contain_text("Gauss 5mm")  # type: ignore[attr-defined]
    sync_api.expect(page.locator("#filters")).to_contain_text("905")  # type: ignore[attr-defined]


def test_retry_a_failed_task(page: object, served: Served) -> None:
    task_id = make_task(
        served.harness.sessions,
        stage=Stage.UPLOADING,
        state=State.FAILED,
        reason="remote service unreachable",
    )
    _login(page, "operator", PASSWORDS["operator"])
    page.goto(f"/tasks/{task_id}")  # type: ignore[attr-defined]
    page.click("button:has-text('Retry from uploading')")  # type: ignore[attr-defined]
    sync_api.expect(page.locator(".flash")).to_contain_text("retry done")  # type: ignore[attr-defined]
    with unit_of_work(served.harness.sessions) as session:
        task = session.get(Task, task_id)
        assert task is not None and (task.stage, task.state) == ("uploading", "active")
    assert ("resume", task_id) in served.harness.pipeline.calls
