"""A technologist's view of a real task: the whole gateway (Ray Serve console included), a
series sent by DCMTK storescu, watched in Chromium until done, and its MIP preview opened.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.gateway import Gateway
from petray.db.engine import unit_of_work
from petray.demo.synth import make_pet_series, write_series
from petray.settings import Settings
from petray.site.users import Role, create_user
from serve.reference.main import running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import free_port, run_storescu, start_storescp
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.ray,
    pytest.mark.peers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")
PASSWORD = "correct horse battery staple"


@pytest.fixture
def gateway(tmp_path: Path, ray_cluster: None) -> Iterator[tuple[Settings, int]]:
    reference_port = free_port()
    settings = site_settings(tmp_path / "home", remote_url=f"http://127.0.0.1:{reference_port}")
    with (
        running_reference(settings, port=reference_port),
        start_storescp(tmp_path / "pacs") as pacs,
    ):
        sessions = prepare_site(settings, destination=(pacs.aet, pacs.port))
        with unit_of_work(sessions) as session:
            create_user(session=session, name="tech", password=PASSWORD, role=Role.OPERATOR)
        running = Gateway(settings).start()
        try:
            yield settings, int(running.listener["port"])
        finally:
            running.stop()


def test_watch_a_storescu_task_to_done_and_open_its_mip(
    gateway: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, dicom_port = gateway
    files = write_series(make_pet_series(slices=16, rows=48, cols=48, seed=21), tmp_path / "scan")
    sent = run_storescu(files, host="127.0.0.1", port=dicom_port, called_ae="PETRAY")
    assert sent.returncode == 0, sent.stderr
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=f"http://127.0.0.1:{settings.http_port}")
        page.set_default_timeout(15_000)
        page.goto("/login")
        page.fill("#username", "tech")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        sync_api.expect(page.locator("h1")).to_have_text(re.compile("Dashboard"))
        # The dashboard asks the real actors over Ray: every one must be shown healthy. Each
        # actor has half a second to answer, and right after the send the pipeline is busy with
        # the series on two cores, beside the other tests ("not answering" is then the truth):
        # ask again, as staff would, until all answer at once.
        actors = page.locator("table").first
        deadline = time.monotonic() + 60
        while (
            "store_scp alive" not in " ".join(actors.inner_text().split())
            or page.locator(".badge.bad").count() > 0
        ):
            assert time.monotonic() < deadline, actors.inner_text()
            time.sleep(1)
            page.goto("/")
        sync_api.expect(actors).to_contain_text("store_scp alive")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            page.goto("/tasks")
            if page.locator("span.state.done").count() == 1:
                break
            time.sleep(1)
        sync_api.expect(page.locator("span.state.done")).to_have_count(1)
        page.locator("table a[href^='/tasks/']").first.click()
        sync_api.expect(page.locator("#mip-source")).to_be_visible()
        images = page.locator("img.mip")
        assert images.count() == 2  # the received series and the one denoised output
        for index in range(images.count()):
            image = images.nth(index)
            image.scroll_into_view_if_needed()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
            )
        browser.close()
