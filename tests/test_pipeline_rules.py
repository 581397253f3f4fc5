"""Pipeline rules that need the real actors: readiness without NumberOfSlices, aborts, licence
refusals and a service that goes away and comes back. The HTTP app is not needed here: every
case ends before the service's callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from actors.pipeline import Pipeline, build_pipeline
from actors.runtime import Dispatcher
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.demo.synth import make_pet_series, write_series
from petray.domain import Stage
from petray.settings import Settings
from petray.tasks import TaskSummary, cancel, list_tasks, retry, unfinished_tasks
from serve.reference.config import Switches
from serve.reference.main import RunningServer, running_reference
from tests.support.gateway_site import prepare_site, site_settings
from tests.support.peers import free_port, run_storescu

pytestmark = [pytest.mark.ray, pytest.mark.peers]
WAIT_S = 60


class Rig:
    """One gateway for the module (a pipeline costs a dozen worker processes to build); each test
    sends its own series and follows the task of that series only."""

    def __init__(self, settings: Settings, reference: RunningServer, pipeline: Pipeline) -> None:
        self.settings = settings
        self.reference = reference
        self.pipeline = pipeline
        self.sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
        self.series_uid = ""

    @property
    def port(self) -> int:
        return int(self.pipeline.listener["port"])

    def task(self) -> TaskSummary | None:
        with unit_of_work(self.sessions) as session:
            mine = [
                t for t in list_tasks(session=session) if t.series_instance_uid == self.series_uid
            ]
        return mine[0] if mine else None

    def wait_for(self, condition: Callable[[TaskSummary], bool], what: str) -> TaskSummary:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            task = self.task()
            if task is not None and condition(task):
                return task
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.task()}")

    def control(self, **switches: Any) -> None:
        httpx.post(
            f"{self.reference.url}/_control",
            json=switches,
            headers={"Authorization": f"Bearer {self.settings.remote_token}"},
        ).raise_for_status()

    def reset(self) -> None:
        """The service back to its defaults, and no task of an earlier test left running."""
        self.control(**Switches().model_dump(mode="json"))
        with unit_of_work(self.sessions) as session:
            for task_id, _stage in unfinished_tasks(session=session):
                cancel(task_id, session=session)

    def send(self, tmp_path: Path, **spec: Any) -> list[Path]:
        series = make_pet_series(**spec)
        files = write_series(series, tmp_path / f"series-{spec.get('seed', 0)}")
        self.series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        result = run_storescu(files, host="127.0.0.1", port=self.port, called_ae="PETRAY")
        assert result.returncode == 0, result.stderr
        return files


@pytest.fixture(scope="module")
def shared_rig(tmp_path_factory: pytest.TempPathFactory, ray_cluster: None) -> Iterator[Rig]:
    reference_port = free_port()
    settings = site_settings(
        tmp_path_factory.mktemp("rules") / "home",
        remote_url=f"http://127.0.0.1:{reference_port}",
        retry_cap_s=0.5,
        processing_deadline_s=6.0,
    )
    with running_reference(settings, port=reference_port) as reference:
        # Nothing listens at the destination: every case here ends before delivery.
        prepare_site(
            settings,
            destination=("PACS", free_port()),
            inactivity_wait_s=1.0,
            abort_timeout_s=4.0,
        )
        pipeline = build_pipeline(settings)
        try:
            yield Rig(settings, reference, pipeline)
        finally:
            pipeline.stop()


@pytest.fixture
def rig(shared_rig: Rig) -> Rig:
    shared_rig.reset()
    return shared_rig


def test_without_number_of_slices_contiguous_series_goes_after_the_quiet_period(
    rig: Rig, tmp_path: Path
) -> None:
    sent = time.monotonic()
    rig.send(tmp_path, slices=12, rows=32, cols=32, number_of_slices=False, seed=1)
    task = rig.wait_for(lambda t: t.stage != "compiling", "the task to leave compiling")
    waited = time.monotonic() - sent
    assert task.state != "failed", task.reason
    assert task.images == 12 and task.expected_images is None
    assert waited >= 1.0  # the inactivity wait, not earlier: nothing proved it complete


def test_without_number_of_slices_a_gap_is_aborted_with_the_reason(
    rig: Rig, tmp_path: Path
) -> None:
    rig.send(tmp_path, slices=12, rows=32, cols=32, number_of_slices=False, drop={5, 6}, seed=2)
    task = rig.wait_for(lambda t: t.state == "failed", "the abort")
    assert task.stage == "compiling"
    assert "gap" in task.reason and "aborted" in task.reason


def test_incomplete_series_with_number_of_slices_is_aborted(rig: Rig, tmp_path: Path) -> None:
    rig.send(tmp_path, slices=12, rows=32, cols=32, drop={3}, seed=3)
    task = rig.wait_for(lambda t: t.state == "failed", "the abort")
    assert "11 of 12 images" in task.reason


@pytest.mark.parametrize(
    ("code", "words"), [(405, "licen"), (406, "radiopharmaceutical"), (407, "algorithm")]
)
def test_licence_refusals_fail_at_once_with_the_reason(
    rig: Rig, tmp_path: Path, code: int, words: str
) -> None:
    rig.control(refuse=code)
    rig.send(tmp_path, slices=8, rows=32, cols=32, seed=code)
    task = rig.wait_for(lambda t: t.state == "failed", "the refusal")
    assert task.stage == "validating"
    assert str(code) in task.reason and words in task.reason.lower()


def test_service_down_then_back_the_task_continues_by_itself(rig: Rig, tmp_path: Path) -> None:
    rig.control(fail_5xx=True)
    rig.send(tmp_path, slices=8, rows=32, cols=32, seed=5)
    waiting = rig.wait_for(lambda t: t.state == "waiting", "the task to wait")
    assert waiting.stage == "validating" and waiting.reason
    time.sleep(1.0)
    still = rig.task()
    assert still is not None and still.state == "waiting"  # still waiting, not failed
    rig.control(fail_5xx=False)
    task = rig.wait_for(lambda t: t.stage == "processing", "the upload")
    assert task.state == "waiting"
    upload = rig.settings.resolved_shared_dir / "to_process" / f"{task.id}.zip"
    assert upload.exists()


def test_slow_service_keeps_the_task_waiting_without_failing(rig: Rig, tmp_path: Path) -> None:
    rig.control(delay=1.5)
    rig.send(tmp_path, slices=8, rows=32, cols=32, seed=6)
    task = rig.wait_for(lambda t: t.stage == "processing", "the upload")
    assert task.state == "waiting" and "result" in task.reason


def test_custom_metrics_are_scrapeable_in_prometheus_format(rig: Rig, tmp_path: Path) -> None:
    import ray

    rig.send(tmp_path, slices=8, rows=32, cols=32, seed=7)
    rig.wait_for(lambda t: t.stage == "processing", "the upload")
    port = ray.nodes()[0]["MetricsExportPort"]
    wanted = (
        "ray_petray_instances_received",
        "ray_petray_bytes_received",
        "ray_petray_stage_tasks",
        "ray_petray_stage_seconds",
    )
    deadline = time.monotonic() + 40  # metrics are exported every few seconds
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        if all(name in text for name in wanted):
            break
        time.sleep(1)
    missing = [name for name in wanted if name not in text]
    assert missing == []
    assert 'stage="validating"' in text


def test_no_result_before_the_deadline_fails_the_task_and_retry_uploads_again(
    rig: Rig, tmp_path: Path
) -> None:
    # No callback and no result in the shared folder either: the Downloader's periodic sweep
    # (every 30 s, its phase unknown on the module's shared gateway) must find nothing. The
    # service's worker sleeps through this case, so it stays the module's last.
    rig.control(drop_callback=True, slow=WAIT_S)
    rig.send(tmp_path, slices=8, rows=32, cols=32, seed=8)
    task = rig.wait_for(lambda t: t.state == "failed", "the processing deadline")
    assert task.stage == "processing"
    assert "no result" in task.reason and "retry" in task.reason
    with unit_of_work(rig.sessions) as session:
        assert retry(task.id, session=session) == Stage.UPLOADING
    Dispatcher().submit(Stage.UPLOADING, task.id)
    again = rig.wait_for(
        lambda t: t.stage == "processing" and t.state == "waiting", "the second upload"
    )
    assert again.id == task.id
