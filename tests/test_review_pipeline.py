"""Hold for review end to end (issue 15): the whole gateway, the reference service, DCMTK
storescu and storescp. A site limit on SUVmax holds a Gaussian-filtered result before sending;
nothing reaches the destination; the console shows the quantitative table and the buttons; a
release in Chromium delivers it; a second series rejected over the REST API fails with the
reason and an audit event, and is never delivered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from actors.gateway import Gateway
from petray.db.engine import unit_of_work
from petray.db.models import AuditEvent
from petray.demo.synth import make_pet_series, write_series
from petray.imaging.filters import FilterSpec
from petray.settings import Settings
from petray.site.users import Role, create_api_token, create_user
from petray.tasks import TaskSummary, list_tasks
from serve.reference.main import running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import StoreSCP, free_port, run_storescu, start_storescp
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.ray,
    pytest.mark.peers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api")
PASSWORD = "correct horse battery staple"
SLICES = 16
# A 6 mm Gaussian lowers the hottest voxel far more than 1 %: every task is held.
FILTER = FilterSpec(id=None, description="Gauss 6mm", series_number=901, fwhm_mm=6.0)
SUVMAX_LIMIT_PCT = 1.0
WAIT_S = 90


@dataclass
class Rig:
    settings: Settings
    sessions: sessionmaker[Session]
    dicom_port: int
    pacs: StoreSCP
    token: str

    def send(self, tmp_path: Path, seed: int) -> None:
        series = make_pet_series(slices=SLICES, rows=48, cols=48, seed=seed)
        files = write_series(series, tmp_path / f"scan-{seed}")
        sent = run_storescu(files, host="127.0.0.1", port=self.dicom_port, called_ae="PETRAY")
        assert sent.returncode == 0, sent.stderr

    def wait_for(self, condition: Callable[[list[TaskSummary]], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with unit_of_work(self.sessions) as session:
                tasks = list_tasks(session=session)
            if condition(tasks):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {[t.as_dict() for t in tasks]}")

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"http://127.0.0.1:{self.settings.http_port}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
            **kwargs,
        )


def states(tasks: list[TaskSummary]) -> list[str]:
    return [t.state for t in tasks]


@pytest.fixture
def rig(tmp_path: Path, ray_cluster: None) -> Iterator[Rig]:
    reference_port = free_port()
    # Sweeps every second: the two-sweep waits below prove no sweep takes a held task up, cheaply.
    settings = site_settings(
        tmp_path / "home", remote_url=f"http://127.0.0.1:{reference_port}", sweep_interval_s=1.0
    )
    with (
        running_reference(settings, port=reference_port),
        start_storescp(tmp_path / "pacs") as pacs,
    ):
        sessions = prepare_site(
            settings,
            destination=(pacs.aet, pacs.port),
            filters=(FILTER,),
            quant_max_suvmax_change_pct=SUVMAX_LIMIT_PCT,
        )
        with unit_of_work(sessions) as session:
            user = create_user(session=session, name="tech", password=PASSWORD, role=Role.OPERATOR)
            token = create_api_token(user, session=session)[1]
        running = Gateway(settings).start()
        try:
            yield Rig(settings, sessions, int(running.listener["port"]), pacs, token)
        finally:
            running.stop()


def test_held_result_is_released_in_the_console_or_rejected_over_the_api(
    rig: Rig, tmp_path: Path
) -> None:
    rig.send(tmp_path, seed=31)
    rig.wait_for(lambda ts: states(ts) == ["held"], "the first task to be held")
    with unit_of_work(rig.sessions) as session:
        [task] = list_tasks(session=session)
    assert task.stage == "sending" and task.reason.startswith("held for quantitative review")
    quant = task.quant
    assert quant is not None and quant["check"]["status"] == "held"
    assert quant["suv_factor"] is not None and quant["received"]["suv_max"] > 0
    [row] = quant["series"]
    assert row["label"] == "#901 Gauss 6mm" and row["change_pct"]["max_bqml"] < -SUVMAX_LIMIT_PCT
    # Smoothing moves activity, it does not remove it (the denoised result is compared too).
    assert abs(row["change_pct"]["total_mbq"]) < 5
    assert quant["check"]["breaches"] == [
        f"#901 Gauss 6mm: SUVmax changed by {row['change_pct']['max_bqml']:+.1f} % "
        f"(limit {SUVMAX_LIMIT_PCT:g} %)"
    ]
    time.sleep(2 * rig.settings.sweep_interval_s)  # no sweep takes a held task up
    assert rig.pacs.received() == []
    assert states(list_tasks_now(rig)) == ["held"]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(base_url=f"http://127.0.0.1:{rig.settings.http_port}")
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto("/login")
        page.fill("#username", "tech")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"/tasks/{task.id}")
        sync_api.expect(page.locator("#task-state")).to_have_text("held")
        sync_api.expect(page.locator("#quant-table tbody tr")).to_have_count(2)
        sync_api.expect(page.locator("#quant-table td.breach")).to_have_count(1)
        sync_api.expect(page.locator("#held-reason")).to_contain_text("SUVmax changed by")
        sync_api.expect(page.locator("#reject-form")).to_be_visible()
        page.get_by_role("button", name="Release and send").click()
        sync_api.expect(page.locator("#quant-status")).to_have_text("released")
        sync_api.expect(page.locator("#task-state")).to_have_text(
            re.compile("done"), timeout=WAIT_S * 1000
        )
        browser.close()
    assert len(rig.pacs.received()) == SLICES

    rig.send(tmp_path, seed=33)
    rig.wait_for(lambda ts: states(ts) == ["held", "done"], "the second task to be held")
    second = list_tasks_now(rig)[0]
    response = rig.api("POST", f"/tasks/{second.id}/reject", json={"reason": "lesion smoothed"})
    assert response.status_code == 200 and response.json()["state"] == "failed"
    detail = rig.api("GET", f"/tasks/{second.id}").json()
    assert detail["reason"].startswith("rejected after quantitative review by tech: #901 Gauss")
    assert detail["reason"].endswith("(lesion smoothed)")
    assert detail["quant"]["check"]["status"] == "rejected"
    time.sleep(2 * rig.settings.sweep_interval_s)
    assert len(rig.pacs.received()) == SLICES  # the rejected series never left
    with unit_of_work(rig.sessions) as session:
        trail = [
            (e.action, e.actor, e.target)
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))
            if e.action.startswith("task.")
        ]
    assert trail == [
        ("task.hold", "petray", f"task {task.id}"),
        ("task.release", "tech", f"task {task.id}"),
        ("task.hold", "petray", f"task {second.id}"),
        ("task.reject", "tech", f"task {second.id}"),
    ]


def list_tasks_now(rig: Rig) -> list[TaskSummary]:
    with unit_of_work(rig.sessions) as session:
        return list_tasks(session=session)
