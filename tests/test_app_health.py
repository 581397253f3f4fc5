"""``GET /api/v1/health`` and the dashboard tell the truth (issue 8 item 9).

The app runs with the fake pipeline (actor facts are set per test; the Ray side is in
test_control_health.py), the real database, a real reference service or real sockets that
refuse or never answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import Device
from petray.demo.tasks import PATIENT_NAME, add_task
from petray.domain import Stage, State
from petray.ports import ActorStatus
from petray.settings import Settings
from petray.stages.delivery import set_destination_state
from petray.stages.destinations import assign_destinations
from petray.tasks import get_task
from serve.app import create_app
from serve.reference.app import create_reference_app
from serve.reference.config import ReferenceConfig
from serve.reference.main import RunningServer, start_in_thread
from tests.support.app import AppHarness, FakePipeline, build_harness, harness, make_settings

__all__ = ["harness"]  # the fixture, used by name

HEALTH = "/api/v1/health"
# Issue 8 item 9: probes give up after about a second.
HEALTH_BUDGET_S = 1.0


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[RunningServer]:
    """petray's reference processing service: it answers GET /check_ping."""
    service_side = Settings(home=tmp_path / "service")
    running = start_in_thread(create_reference_app(ReferenceConfig.for_settings(service_side)))
    yield running
    running.stop()


@pytest.fixture
def healthy(tmp_path: Path, reference: RunningServer) -> Iterator[AppHarness]:
    yield from build_harness(tmp_path, remote_url=reference.url)


def body(h: AppHarness) -> tuple[int, dict[str, Any]]:
    response = h.client.get(HEALTH)
    assert PATIENT_NAME not in response.text
    return response.status_code, response.json()


def checks(report: dict[str, Any], verdict: str) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if c["verdict"] == verdict]


def add_destination(h: AppHarness, name: str = "pacs", port: int = 11104) -> None:
    with unit_of_work(h.sessions) as session:
        session.add(
            Device(name=name, ae_title=name.upper(), host="127.0.0.1", port=port,
                   is_destination=True)
        )  # fmt: skip


def delivered(h: AppHarness, state: str, reason: str = "") -> str:
    """A task at sending whose delivery to every destination ended in ``state``.

    The rows are written by the functions the Validator and the Store SCU use.
    """
    with unit_of_work(h.sessions) as session:
        task_id = add_task(session, stage=Stage.SENDING, state=State.ACTIVE)
        session.flush()
        rows = assign_destinations(get_task(task_id, session=session), session=session)
        session.flush()
        for row in rows:
            set_destination_state(row.id, state, reason=reason, session=session)
    return task_id


def settled(h: AppHarness) -> tuple[int, dict[str, Any]]:
    """The report once every fact came in within the probe's budget: on a machine busy with the
    other tests one may not, and the verdict is then honestly "degraded" (probe again)."""
    deadline = time.monotonic() + 15
    status, report = body(h)
    while report["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
        status, report = body(h)
    return status, report


def test_ok_when_everything_answers(healthy: AppHarness) -> None:
    add_destination(healthy)
    delivered(healthy, "done")
    status, report = settled(healthy)
    assert (status, report["status"]) == (200, "ok"), checks(report, "warn")
    assert report["database"] is True and report["dicom_listener"] is True
    assert {a["name"]: a["restarts"] for a in report["actors"]} == {
        "compilator": 0,
        "store_scp": 0,
        "store_scu": 0,
    }
    assert report["remote"]["reachable"] is True and report["remote"]["latency_ms"] >= 0
    assert report["disk"]["free_mb"] >= report["disk"]["min_free_mb"]
    assert [(d["name"], d["state"]) for d in report["destinations"]] == [("pacs", "ok")]
    assert checks(report, "warn") == checks(report, "fail") == []


@pytest.mark.parametrize(
    ("actor", "failing_check"),
    [
        (ActorStatus(name="store_scp", alive=True, restarts=0, listening=False), "dicom_listener"),
        (ActorStatus(name="store_scp", alive=False, listening=False), "store_scp"),
    ],
)
def test_503_when_the_scp_does_not_listen(
    healthy: AppHarness, actor: ActorStatus, failing_check: str
) -> None:
    healthy.pipeline.actors[1] = actor
    status, report = body(healthy)
    assert (status, report["status"]) == (503, "down")
    assert report["dicom_listener"] is False
    assert failing_check in [c["name"] for c in checks(report, "fail")]


def test_503_when_an_actor_is_dead(healthy: AppHarness) -> None:
    healthy.pipeline.actors[2] = ActorStatus(
        name="store_scu", alive=False, restarts=4, details={"state": "RESTARTING"}
    )
    status, report = body(healthy)
    assert (status, report["status"]) == (503, "down")
    (failed,) = checks(report, "fail")
    assert failed["name"] == "store_scu" and "restarting" in failed["reason"]
    assert {"name": "store_scu", "alive": False, "responding": True, "restarts": 4} in report[
        "actors"
    ]


def test_503_when_free_disk_is_below_the_floor(tmp_path: Path, reference: RunningServer) -> None:
    for h in build_harness(tmp_path, remote_url=reference.url, min_free_disk_mb=10**9):
        status, report = body(h)
        assert (status, report["status"]) == (503, "down")
        (failed,) = checks(report, "fail")
        assert failed["kind"] == "disk" and "refused" in failed["reason"]
        assert report["disk"]["min_free_mb"] == 10**9


def test_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    # A real driver against a port where nothing listens: connection refused at once.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    url = f"postgresql+psycopg://petray:s3cret-pw@127.0.0.1:{port}/petray"
    settings = make_settings(tmp_path, database_url=url)
    engine = make_engine(url)
    app = create_app(settings, session_factory=make_sessionmaker(engine), pipeline=FakePipeline())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = client.get(HEALTH)
    engine.dispose()
    assert response.status_code == 503
    report = response.json()
    assert report["status"] == "down" and report["database"] is False
    assert "s3cret-pw" not in response.text  # the driver's message names the URL
    assert [c["kind"] for c in checks(report, "fail")] == ["database"]


def test_a_failing_destination_degrades_with_its_reason(healthy: AppHarness) -> None:
    add_destination(healthy, "pacs")
    add_destination(healthy, "archive", port=11105)
    delivered(healthy, "done")
    reason = "cannot associate with PACS@127.0.0.1:11104: Connection refused"
    delivered(healthy, "waiting", reason)
    status, report = body(healthy)
    assert (status, report["status"]) == (200, "degraded")
    warned = {c["name"]: c for c in checks(report, "warn")}
    assert set(warned) == {"pacs", "archive"}  # both were in the failed delivery
    assert reason in warned["pacs"]["reason"]
    assert warned["pacs"]["since"] is not None
    destinations = {d["name"]: d for d in report["destinations"]}
    assert destinations["pacs"]["state"] == "failing"
    assert destinations["pacs"]["reason"] == reason


def test_the_service_unreachable_degrades(harness: AppHarness) -> None:
    # The harness's remote URL is a port where nothing listens.
    add_destination(harness)
    status, report = body(harness)
    assert (status, report["status"]) == (200, "degraded")
    (warned,) = checks(report, "warn")
    assert warned["kind"] == "remote_service" and "tasks wait" in warned["reason"]
    assert report["remote"]["reachable"] is False


@pytest.fixture
def silent_service() -> Iterator[str]:
    """A service that accepts connections and never answers (the kernel's backlog accepts)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_health_is_fast_when_the_service_hangs_and_the_ping_is_cached(
    tmp_path: Path, silent_service: str
) -> None:
    for h in build_harness(tmp_path, remote_url=silent_service, remote_timeout_s=10.0):
        started = time.perf_counter()
        status, report = body(h)
        first = time.perf_counter() - started
        assert (status, report["status"]) == (200, "degraded")
        assert report["remote"]["reachable"] is False
        started = time.perf_counter()
        assert body(h)[1]["remote"] == report["remote"]
        second = time.perf_counter() - started
        print(
            f"health with a hanging service: {first * 1000:.0f} ms, cached {second * 1000:.0f} ms"
        )
        assert first < HEALTH_BUDGET_S
        assert second < first / 2  # the cached answer, not a second wait


class HangingPipeline(FakePipeline):
    """A pipeline whose status never comes back (a wedged Ray control plane)."""

    async def status(self) -> list[ActorStatus]:
        await asyncio.sleep(30)
        return []


def test_503_within_a_second_when_the_pipeline_hangs(
    tmp_path: Path, reference: RunningServer
) -> None:
    for h in build_harness(tmp_path, pipeline=HangingPipeline(), remote_url=reference.url):
        started = time.perf_counter()
        status, report = body(h)
        elapsed = time.perf_counter() - started
        assert (status, report["status"]) == (503, "down")
        assert elapsed < HEALTH_BUDGET_S
        (failed,) = checks(report, "fail")
        assert failed["name"] == "pipeline" and "in time" in failed["reason"]
        assert report["dicom_listener"] is None


def test_dashboard_shows_the_same_verdict_and_reasons(healthy: AppHarness) -> None:
    add_destination(healthy)
    delivered(healthy, "done")
    healthy.login("viewer")
    # Each fact has under a second to come in (the probe's budget); on a machine busy with the
    # other tests one may not, and the verdict is then honestly "degraded": reload, as staff
    # would, until every check answered in time.
    deadline = time.monotonic() + 15
    while True:
        page = healthy.client.get("/").text
        calm = 'class="badge bad"' not in page and 'class="badge warn"' not in page
        if calm or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert 'id="health-status">ok<' in page
    assert 'class="badge bad"' not in page and 'class="badge warn"' not in page

    reason = "PACS@127.0.0.1:11104 refused instance 1 of 3: Out of Resources"
    delivered(healthy, "failed", reason)
    healthy.pipeline.actors[1] = ActorStatus(name="store_scp", alive=True, listening=False)
    page = healthy.client.get("/").text
    assert 'id="health-status">down<' in page
    assert reason in page
    assert "not listening" in page
    assert body(healthy)[1]["status"] == "down"  # the API agrees
