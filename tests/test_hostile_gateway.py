"""The hostile corpus against a whole running gateway (issue 9): on the shared Ray cluster, with
the reference service switched to write bad result archives, a forged callback and a hostile
C-STORE between two good series. Each bad task fails with its reason, the gateway stays up, and
the good series before and after are delivered to a real DICOM destination (DCMTK storescp).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.gateway import Gateway
from petray.db.engine import unit_of_work
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.status import StoreStatus
from petray.domain import Stage, State
from petray.imaging.filters import FilterSpec
from petray.tasks import TaskSummary, list_tasks
from serve.reference.main import running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import LOOPBACK, free_port, run_storescu, start_storescp
from tests.test_hostile_dicom import pet, raw_file, send_files, with_pixel_length

pytestmark = [pytest.mark.ray, pytest.mark.peers]

FILTER = FilterSpec(id=None, description="Gauss 4mm", series_number=901, fwhm_mm=4.0)
SLICES = 8
WAIT_S = 120
# The reference service's malicious modes and the reason each failed task must give.
BAD_ARCHIVES = {
    "traversal": "points outside the archive root",
    "symlink": "is a symbolic link",
    "nan": "NaN or infinite values in slice",
    # The noise is read after the denoised volume is already in the object store.
    "noise_nan": "noise.npy: NaN or infinite values in slice",
    # float64 is twice the bytes: refused by size before its dtype is even read.
    "wrong_dtype": "denoised.npy is larger than expected",
    "wrong_shape": "differs from expected",
}


class Running:
    def __init__(self, settings: Any, sessions: Any, reference_url: str, received: Path) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reference_url = reference_url
        self.received = received
        self.sent = 0

    def tasks(self) -> list[TaskSummary]:
        with unit_of_work(self.sessions) as session:
            return list_tasks(session=session)

    def wait_for(self, condition: Callable[[list[TaskSummary]], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if condition(self.tasks()):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {[t.as_dict() for t in self.tasks()]}")

    def control(self, **switches: Any) -> None:
        response = httpx.post(
            f"{self.reference_url}/_control",
            json=switches,
            headers={"Authorization": f"Bearer {self.settings.remote_token}"},
        )
        response.raise_for_status()

    def send_series(self, tmp_path: Path, seed: int) -> TaskSummary:
        """One series from storescu; returns its task once finished (done or failed)."""
        before = {t.id for t in self.tasks()}
        files = write_series(
            make_pet_series(slices=SLICES, rows=32, cols=32, seed=seed), tmp_path / f"s{seed}"
        )
        result = run_storescu(
            files, host=LOOPBACK, port=self.settings.dicom_port, called_ae="PETRAY"
        )
        assert result.returncode == 0, result.stdout + result.stderr

        def finished(tasks: list[TaskSummary]) -> bool:
            new = [t for t in tasks if t.id not in before]
            return bool(new) and new[0].state in (State.DONE, State.FAILED)

        self.wait_for(finished, f"series {seed}")
        (task,) = [t for t in self.tasks() if t.id not in before]
        return task

    def delivered(self) -> int:
        return len(list(self.received.rglob("*")))


@pytest.fixture
def running(tmp_path: Path, ray_cluster: None) -> Iterator[Running]:
    reference_port = free_port()
    settings = site_settings(
        tmp_path / "home", remote_url=f"http://127.0.0.1:{reference_port}", filter_workers=1
    )
    with (
        running_reference(settings, port=reference_port) as reference,
        start_storescp(tmp_path / "pacs") as pacs,
    ):
        sessions = prepare_site(settings, destination=(pacs.aet, pacs.port), filters=(FILTER,))
        gateway = Gateway(settings, log_to_driver=False).start()
        try:
            yield Running(settings, sessions, reference.url, pacs.output_dir)
        finally:
            gateway.stop()


def good(running: Running, tmp_path: Path, seed: int) -> None:
    delivered = running.delivered()
    task = running.send_series(tmp_path, seed)
    assert (task.stage, task.state) == (Stage.DONE, State.DONE), task.reason
    running.wait_for(lambda _: running.delivered() == delivered + SLICES, "delivery")


def test_bad_results_forged_callbacks_and_bad_instances_between_good_series(
    running: Running, tmp_path: Path
) -> None:
    good(running, tmp_path, seed=1)
    reasons = {}
    for seed, mode in enumerate(BAD_ARCHIVES, start=10):
        running.control(malicious=mode)
        task = running.send_series(tmp_path, seed)
        assert task.state == State.FAILED, (mode, task.as_dict())
        reasons[mode] = task.reason
        assert not list((running.settings.output_dir / task.id).rglob("*.dcm")), mode
    running.control(malicious=None)
    for mode, phrase in BAD_ARCHIVES.items():
        assert phrase in reasons[mode], (mode, reasons[mode])
    # A forged callback through Ray Serve's proxy changes nothing.
    forged = httpx.post(
        running.settings.resolved_callback_url,
        json={"task_id": running.tasks()[0].id},
        headers={"Authorization": "Bearer not-the-service"},
    )
    assert forged.status_code == 401
    # A lying instance is refused by the gateway's own listener, and counted.
    ds = pet()
    lying = raw_file(
        tmp_path / "lying.dcm", with_pixel_length(ds, 100), sop_instance=str(ds.SOPInstanceUID)
    )
    (status,) = send_files(running.settings.dicom_port, [lying])
    assert status is not None and status.Status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "PixelData is 100 bytes" in str(status.ErrorComment)
    # The listener is still there, and the next good series is delivered like the first.
    good(running, tmp_path, seed=2)
    assert running.delivered() == 2 * SLICES
    # Each actor has half a second to report: on a loaded machine one report may come late,
    # which says nothing of the hostile input. What must not be is a lasting "down".
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(
            f"http://127.0.0.1:{running.settings.http_port}/api/v1/health", timeout=10
        ).json()
        if health["status"] != "down" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health["status"] != "down", [c for c in health["checks"] if c["verdict"] == "fail"]
