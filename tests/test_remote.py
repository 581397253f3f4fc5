"""RemoteClient: status mapping, auth header, timeouts, and calls against the reference service
served by uvicorn in this process."""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from petray.errors import ConfigurationError, PermanentError, RemoteRefused, TransientError
from petray.service.remote import RemoteClient
from serve.reference.app import create_reference_app
from serve.reference.main import RunningServer, start_in_thread
from tests.test_reference_service import (
    CHECK_MODEL_FIELDS,
    SITE,
    TOKEN,
    make_config,
    make_upload,
    make_volume,
)

SECRET_WEIGHT = 73.25  # a metadata value that must never come back in an error reason


def mock_client(
    status: int, body: Any = None, seen: list[httpx.Request] | None = None
) -> RemoteClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, json=body if body is not None else {})

    return RemoteClient("http://service.test", TOKEN, transport=httpx.MockTransport(handler))


# -- status mapping ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (405, RemoteRefused),
        (406, RemoteRefused),
        (407, RemoteRefused),
        (401, ConfigurationError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
        (408, TransientError),
        (429, TransientError),
        (400, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
    ],
)
def test_check_model_status_mapping(status: int, error: type[Exception]) -> None:
    with mock_client(status) as client, pytest.raises(error) as caught:
        client.check_model(CHECK_MODEL_FIELDS)
    if error is RemoteRefused:
        assert isinstance(caught.value, RemoteRefused)
        assert caught.value.status_code == status
    # Transient and permanent must never be confused: retry loops depend on it.
    assert isinstance(caught.value, TransientError) == (error is TransientError)


@pytest.mark.parametrize(
    ("status", "words"),
    [(405, "no active licence"), (406, "radiopharmaceutical"), (407, "algorithm")],
)
def test_refusals_carry_a_clear_reason(status: int, words: str) -> None:
    with (
        mock_client(status, {"detail": "server says no"}) as client,
        pytest.raises(RemoteRefused) as caught,
    ):
        client.check_model(CHECK_MODEL_FIELDS)
    assert words in str(caught.value) and "server says no" in str(caught.value)
    restored = pickle.loads(pickle.dumps(caught.value))  # crosses actor boundaries
    assert restored.status_code == status and str(restored) == str(caught.value)


def test_200_is_success_and_the_bearer_token_is_sent_on_every_call() -> None:
    seen: list[httpx.Request] = []
    with mock_client(200, seen=seen) as client:
        assert client.ping() >= 0
        client.check_model(CHECK_MODEL_FIELDS)
        client.start_processing(task_id="a" * 32, client_id=SITE, metadata={})
    assert [r.url.path for r in seen] == ["/check_ping", "/check_model", "/processing"]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in seen)


@pytest.mark.parametrize("status", [200, 202])
def test_start_processing_accepts_200_and_202_with_the_protocol_body(status: int) -> None:
    seen: list[httpx.Request] = []
    with mock_client(status, {"response": "Processing"}, seen) as client:
        client.start_processing(task_id="b" * 32, client_id=SITE, metadata={"weight": 70})
    assert json.loads(seen[0].content) == {
        "input_file": "b" * 32 + ".zip",
        "client_id": SITE,
        "metadata": {"weight": 70},
    }


def test_validation_errors_do_not_echo_metadata_values() -> None:
    body = {"detail": [{"loc": ["body", "weight"], "msg": "bad", "input": SECRET_WEIGHT}]}
    with mock_client(422, body) as client, pytest.raises(PermanentError) as caught:
        client.start_processing(task_id="c" * 32, client_id=SITE, metadata={})
    assert "body.weight: bad" in str(caught.value)
    assert str(SECRET_WEIGHT) not in str(caught.value)


def test_an_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        RemoteClient("http://service.test", "")


# -- network failures --------------------------------------------------------------------------
@pytest.fixture
def sleepy_server() -> Iterator[str]:
    """Answers after two seconds: longer than the client's timeout in these tests."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _slow(self) -> None:
            release.wait(2.0)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _slow

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


def test_timeouts_are_transient(sleepy_server: str) -> None:
    with RemoteClient(sleepy_server, TOKEN, timeout_s=0.2) as client:
        with pytest.raises(TransientError, match="timed out"):
            client.ping()
        with pytest.raises(TransientError, match="timed out"):
            client.check_model(CHECK_MODEL_FIELDS)
        with pytest.raises(TransientError, match="timed out"):
            client.start_processing(task_id="d" * 32, client_id=SITE, metadata={})


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    with RemoteClient(f"http://127.0.0.1:{port}", TOKEN, timeout_s=2) as client:
        with pytest.raises(TransientError, match="unreachable"):
            client.ping()
        with pytest.raises(TransientError, match="unreachable"):
            client.check_model(CHECK_MODEL_FIELDS)


# -- against the reference service over real HTTP ----------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    shared = tmp_path_factory.mktemp("shared")
    # The callback goes to a closed port: these tests only look at the service's answers.
    config = make_config(shared, "http://127.0.0.1:9/process_ready", callback_attempts=1)
    running = start_in_thread(create_reference_app(config))
    running.config = config  # type: ignore[attr-defined]
    yield running
    running.stop()


@pytest.fixture
def remote(service: RunningServer) -> Iterator[RemoteClient]:
    control = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {TOKEN}"})
    control.post("/_control", json={"refuse": None, "fail_5xx": False, "delay": 0})
    with RemoteClient(service.url, TOKEN, timeout_s=5) as client:
        client.control = control  # type: ignore[attr-defined]
        yield client
    control.post("/_control", json={"refuse": None, "fail_5xx": False, "delay": 0})
    control.close()


def test_ping_measures_latency(remote: RemoteClient) -> None:
    latency = remote.ping()
    assert 0 < latency < 5


def test_check_model_accepts_a_licensed_task(remote: RemoteClient) -> None:
    remote.check_model(CHECK_MODEL_FIELDS)  # no exception


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"id_client": "site-expired"}, 405),
        ({"Radiofarmaco": "FES"}, 406),
        ({"ManufacturerModelName": "uMI 550"}, 407),
    ],
)
def test_check_model_licence_refusals(
    remote: RemoteClient, changes: dict[str, Any], status: int
) -> None:
    with pytest.raises(RemoteRefused) as caught:
        remote.check_model({**CHECK_MODEL_FIELDS, **changes})
    assert caught.value.status_code == status


@pytest.mark.parametrize("code", [405, 406, 407])
def test_refuse_switch_maps_to_remote_refused(remote: RemoteClient, code: int) -> None:
    remote.control.post("/_control", json={"refuse": code})  # type: ignore[attr-defined]
    with pytest.raises(RemoteRefused) as caught:
        remote.check_model(CHECK_MODEL_FIELDS)
    assert caught.value.status_code == code


def test_fail_5xx_switch_is_transient_then_recovers(remote: RemoteClient) -> None:
    remote.control.post("/_control", json={"fail_5xx": True})  # type: ignore[attr-defined]
    with pytest.raises(TransientError):
        remote.check_model(CHECK_MODEL_FIELDS)
    remote.control.post("/_control", json={"fail_5xx": False})  # type: ignore[attr-defined]
    remote.check_model(CHECK_MODEL_FIELDS)


def test_delay_switch_beyond_the_timeout_is_transient(service: RunningServer) -> None:
    control = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {TOKEN}"})
    control.post("/_control", json={"delay": 1.0})
    try:
        with (
            RemoteClient(service.url, TOKEN, timeout_s=0.2) as client,
            pytest.raises(TransientError, match="timed out"),
        ):
            client.check_model(CHECK_MODEL_FIELDS)
    finally:
        control.post("/_control", json={"delay": 0})
        control.close()


def test_wrong_token_is_a_configuration_error(service: RunningServer) -> None:
    with (
        RemoteClient(service.url, "not-the-token") as client,
        pytest.raises(ConfigurationError, match="401"),
    ):
        client.ping()


def test_malformed_check_model_is_permanent(remote: RemoteClient) -> None:
    with pytest.raises(PermanentError) as caught:
        remote.check_model({**CHECK_MODEL_FIELDS, "VoxelSpacing": [1.0]})
    assert not isinstance(caught.value, RemoteRefused)
    assert "VoxelSpacing" in str(caught.value)


def test_start_processing_is_accepted_and_idempotent(
    remote: RemoteClient, service: RunningServer
) -> None:
    config = service.config  # type: ignore[attr-defined]
    task_id = make_upload(config.to_process_dir, make_volume())
    metadata = {**CHECK_MODEL_FIELDS, "weight": SECRET_WEIGHT}
    remote.start_processing(task_id=task_id, client_id=SITE, metadata=metadata)
    remote.start_processing(task_id=task_id, client_id=SITE, metadata=metadata)
    deadline = time.monotonic() + 30
    result = Path(config.processed_dir) / f"{task_id}.zip"
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.exists()
    jobs = remote.control.get("/_jobs").json()["jobs"]  # type: ignore[attr-defined]
    mine = [job for job in jobs if job["task_id"] == task_id]
    assert len(mine) == 1 and mine[0]["submissions"] == 2


def test_start_processing_of_a_missing_archive_is_permanent(remote: RemoteClient) -> None:
    with pytest.raises(PermanentError, match="404"):
        remote.start_processing(task_id=uuid.uuid4().hex, client_id=SITE, metadata={})
