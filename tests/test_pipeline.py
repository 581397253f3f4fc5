"""The whole gateway on the shared Ray cluster, with real peers: DCMTK, Orthanc, the reference
service, Ray Serve. Crash tests kill every actor abruptly (no graceful stop) and rebuild the
pipeline from the database, as a restarted gateway does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from pydicom import Dataset

from actors.gateway import Gateway
from actors.pipeline import build_pipeline
from petray.db.engine import unit_of_work
from petray.demo.demo_check import group_by_series, verify_outputs
from petray.demo.synth import make_pet_series, write_series
from petray.domain import Stage, State
from petray.imaging.filters import FilterSpec
from petray.service.archive import read_result_archive
from petray.settings import Settings
from petray.tasks import TaskSummary, list_tasks
from serve.reference.main import RunningServer, running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import (
    dcentvfy_errors,
    dciodvfy_errors,
    free_port,
    run_storescu,
    start_orthanc,
    start_storescp,
)

pytestmark = [pytest.mark.ray, pytest.mark.peers]

FILTERS = (
    FilterSpec(id=None, description="Gauss 5mm", series_number=801, fwhm_mm=5.0),
    FilterSpec(id=None, description="Gauss 3mm n25", series_number=802, fwhm_mm=3.0, noise_pct=25),
)
WAIT_S = 120


@dataclass
class Site:
    settings: Settings
    reference: RunningServer
    sessions: Any

    def tasks(self) -> list[TaskSummary]:
        with unit_of_work(self.sessions) as session:
            return list_tasks(session=session)

    def wait_for(
        self, condition: Callable[[list[TaskSummary]], bool], what: str
    ) -> list[TaskSummary]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            tasks = self.tasks()
            if condition(tasks):
                return tasks
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {[t.as_dict() for t in self.tasks()]}")

    def control(self, **switches: Any) -> None:
        response = httpx.post(
            f"{self.reference.url}/_control",
            json=switches,
            headers={"Authorization": f"Bearer {self.settings.remote_token}"},
        )
        response.raise_for_status()

    def jobs(self) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.reference.url}/_jobs",
            headers={"Authorization": f"Bearer {self.settings.remote_token}"},
        )
        response.raise_for_status()
        body = response.json()
        return list(body["jobs"] if isinstance(body, dict) else body)


@pytest.fixture
def site(tmp_path: Path, ray_cluster: None) -> Iterator[Site]:
    reference_port = free_port()
    settings = site_settings(
        tmp_path / "home", remote_url=f"http://127.0.0.1:{reference_port}", filter_workers=2
    )
    with running_reference(settings, port=reference_port) as reference:
        yield Site(settings=settings, reference=reference, sessions=None)


def _configure(site: Site, *, ae_title: str, port: int, filters: tuple[FilterSpec, ...]) -> None:
    site.sessions = prepare_site(site.settings, destination=(ae_title, port), filters=filters)


def _crash(handles: dict[str, Any]) -> None:
    """Kill every pipeline actor at once, as a power cut would: no stop, no flush."""
    for handle in handles.values():
        ray.kill(handle, no_restart=True)
    time.sleep(0.5)


def _series(tmp_path: Path, **spec: Any) -> tuple[list[Dataset], list[Path]]:
    datasets = make_pet_series(**spec)
    return datasets, write_series(datasets, tmp_path / "scanner")


def _only(tasks: list[TaskSummary]) -> TaskSummary:
    assert len(tasks) == 1, [t.as_dict() for t in tasks]
    return tasks[0]


def test_series_from_storescu_comes_back_filtered_at_orthanc(site: Site, tmp_path: Path) -> None:
    study, files = _series(tmp_path, slices=24, rows=64, cols=64, seed=3)
    with start_orthanc(tmp_path / "orthanc") as orthanc:
        _configure(site, ae_title=orthanc.aet, port=orthanc.dicom_port, filters=FILTERS)
        gateway = Gateway(site.settings).start()
        try:
            listener = gateway.listener
            result = run_storescu(
                files, host="127.0.0.1", port=int(listener["port"]), called_ae="PETRAY"
            )
            assert result.returncode == 0, result.stderr
            tasks = site.wait_for(
                lambda ts: bool(ts) and ts[0].state in ("done", "failed"), "the task to finish"
            )
            task = _only(tasks)
            assert (task.stage, task.state) == (Stage.DONE, State.DONE), task.reason
            assert task.images == 24 and task.expected_images == 24
            assert task.destinations[0]["sent"] == task.destinations[0]["total"] == 48
            received = group_by_series(orthanc.instance_dataset(i) for i in orthanc.instances())
            arrays = read_result_archive(
                site.settings.work_dir / f"{task.id}.result.zip",
                expected_shape=(24, 64, 64),
                max_uncompressed_bytes=site.settings.max_result_bytes,
            )
            with unit_of_work(site.sessions) as session:
                from petray.stages.records import Packed
                from petray.tasks import get_task

                spacing = Packed.of(get_task(task.id, session=session)).spacing_zyx
            problems = verify_outputs(
                received,
                source=study,
                denoised=arrays.denoised,
                noise=arrays.noise,
                filters=FILTERS,
                spacing_zyx=spacing,
            )
            assert problems == []
            # Repeated callbacks are harmless: 200, no second download.
            callback = httpx.post(
                site.settings.resolved_callback_url,
                json={"task_id": task.id},
                headers={"Authorization": f"Bearer {site.settings.callback_token}"},
            )
            assert callback.status_code == 200
            assert _only(site.tasks()).stage == Stage.DONE
        finally:
            gateway.stop()
    outputs = sorted((site.settings.output_dir / task.id).rglob("*.dcm"))
    assert len(outputs) == 48
    for path in outputs[:3] + outputs[-3:]:
        assert dciodvfy_errors(path) == []
    assert dcentvfy_errors(outputs) == []


def test_gateway_killed_mid_series_loses_nothing(site: Site, tmp_path: Path) -> None:
    _study, files = _series(tmp_path, slices=30, rows=32, cols=32, seed=5)
    with start_storescp(tmp_path / "dest") as dest:
        _configure(site, ae_title=dest.aet, port=dest.port, filters=())
        pipeline = build_pipeline(site.settings)
        port = int(pipeline.listener["port"])
        first = run_storescu(files[:12], host="127.0.0.1", port=port, called_ae="PETRAY")
        assert first.returncode == 0, first.stderr
        _crash(pipeline.handles)
        second_pipeline = build_pipeline(site.settings)
        try:
            second = run_storescu(files[12:], host="127.0.0.1", port=port, called_ae="PETRAY")
            assert second.returncode == 0, second.stderr
            tasks = site.wait_for(
                lambda ts: bool(ts) and ts[0].stage not in ("compiling", "validating"),
                "the series to be compiled",
            )
            task = _only(tasks)
            assert task.images == 30
        finally:
            second_pipeline.stop()


def test_restart_between_validation_and_upload_uploads_once(site: Site, tmp_path: Path) -> None:
    _study, files = _series(tmp_path, slices=20, rows=32, cols=32, seed=9)
    with start_storescp(tmp_path / "dest") as dest:
        _configure(site, ae_title=dest.aet, port=dest.port, filters=())
        gateway = Gateway(site.settings).start()
        try:
            # The service answers 503 from now on: validation waits, then upload waits.
            site.control(fail_5xx=True)
            port = int(gateway.listener["port"])
            assert (
                run_storescu(files, host="127.0.0.1", port=port, called_ae="PETRAY").returncode == 0
            )
            site.wait_for(
                lambda ts: bool(ts) and ts[0].stage == "validating" and ts[0].state == "waiting",
                "validation to wait for the service",
            )
            site.control(fail_5xx=False)
            site.wait_for(
                lambda ts: ts[0].stage in ("packing", "uploading", "processing"), "packing"
            )
            site.control(fail_5xx=True)
            handles = gateway._pipeline.handles
            _crash(handles)
            assert _only(site.tasks()).stage in ("packing", "uploading", "processing")
            gateway._pipeline = build_pipeline(site.settings)
            site.control(fail_5xx=False)
            task = _only(
                site.wait_for(lambda ts: ts[0].state in ("done", "failed"), "the task to finish")
            )
            assert task.state == State.DONE, task.reason
            assert [job["task_id"] for job in site.jobs()].count(task.id) == 1
        finally:
            gateway.stop()
