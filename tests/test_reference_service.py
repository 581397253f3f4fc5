"""The reference processing service: auth, licences, processing, worker, callbacks, switches,
malicious archives and the denoiser itself."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient

from petray.retry import Backoff
from serve.reference.app import create_reference_app
from serve.reference.archive import (
    DENOISED_NAME,
    METADATA_NAME,
    NOISE_NAME,
    SYMLINK_ENTRY,
    TRAVERSAL_ENTRY,
    MaliciousMode,
)
from serve.reference.config import ReferenceConfig, Switches
from serve.reference.denoise import (
    ALGORITHM_NAME,
    GuidedFilterParams,
    estimate_noise_sigma,
    guided_denoise,
)
from serve.reference.licences import LicenceTable
from serve.reference.main import config_from_args

TOKEN = "service-token"
CALLBACK_TOKEN = "callback-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITE = "site-a"
CHECK_MODEL_FIELDS: dict[str, Any] = {
    "id_client": SITE,
    "ManufacturerModelName": "Biograph Vision 600",
    "ReconstructionMethod": "OSEM3D 4i5s",
    "Iteraciones": 4,
    "Subsets": 5,
    "VoxelSpacing": [2.0, 2.0, 2.0],
    "SliceThickness": 2.0,
    "Radiofarmaco": "FDG",
    "HalfLife": 6586.2,
}
LICENCES = {
    "sites": {
        SITE: {
            "radiopharmaceuticals": ["FDG", "PSMA-11"],
            "algorithms": [{"model": "Biograph*", "reconstruction": "*", "algorithm": "siemens"}],
        },
        "site-expired": {"active": False},
    }
}
JOB_TIMEOUT_S = 30.0


# -- factories ---------------------------------------------------------------------------------
def make_volume(
    shape: tuple[int, int, int] = (8, 16, 16), seed: int = 0
) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    clean = np.full(shape, 100.0, dtype=np.float32)
    clean[:, :, shape[2] // 2 :] = 400.0
    return clean + rng.normal(0, 20, shape).astype(np.float32)


def make_upload(
    to_process: Path,
    volume: npt.NDArray[Any],
    *,
    task_id: str | None = None,
    metadata_overrides: dict[str, Any] | None = None,
) -> str:
    """Write ``to_process/{task_id}.zip`` as petray's Packer does (REMOTE_PROTOCOL.md)."""
    task_id = task_id or uuid.uuid4().hex
    buffer = io.BytesIO()
    np.save(buffer, volume, allow_pickle=False)
    npy = buffer.getvalue()
    metadata = {
        "task_id": task_id,
        "client_id": SITE,
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "voxel_spacing_mm": [2.0, 2.0, 2.0],
        "sha256": hashlib.sha256(npy).hexdigest(),
        **CHECK_MODEL_FIELDS,
        **(metadata_overrides or {}),
    }
    tmp = to_process / f".{task_id}.tmp"
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(f"{task_id}.npy", npy)
        archive.writestr(METADATA_NAME, json.dumps(metadata))
    os.replace(tmp, to_process / f"{task_id}.zip")
    return task_id


class CallbackReceiver:
    """A tiny petray for ``POST /process_ready``: answers ``statuses`` in order, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                receiver.calls.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                payload = json.dumps({"message": "Acknowledge"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/process_ready"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_config(shared: Path, callback_url: str, **overrides: Any) -> ReferenceConfig:
    values: dict[str, Any] = {
        "shared_dir": shared,
        "token": TOKEN,
        "callback_token": CALLBACK_TOKEN,
        "callback_url": callback_url,
        "licences": LicenceTable.from_json(LICENCES),
        "callback_timeout_s": 2.0,
        "callback_attempts": 4,
        "callback_backoff": Backoff(base_s=0.01, cap_s=0.05),
        **overrides,
    }
    return ReferenceConfig(**values)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    rec = CallbackReceiver()
    yield rec
    rec.close()


@pytest.fixture
def client(tmp_path: Path, receiver: CallbackReceiver) -> Iterator[TestClient]:
    app = create_reference_app(make_config(tmp_path / "shared", receiver.url))
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


def to_process(client: TestClient) -> Path:
    config: ReferenceConfig = client.app.state.config  # type: ignore[attr-defined]
    return config.to_process_dir


def processed(client: TestClient) -> Path:
    config: ReferenceConfig = client.app.state.config  # type: ignore[attr-defined]
    return config.processed_dir


def run_job(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.post(
        "/processing",
        json={"input_file": f"{task_id}.zip", "client_id": SITE, "metadata": CHECK_MODEL_FIELDS},
    )
    assert response.status_code == 202, response.text
    assert client.app.state.worker.wait_idle(JOB_TIMEOUT_S)  # type: ignore[attr-defined]
    jobs = {job["task_id"]: job for job in client.get("/_jobs").json()["jobs"]}
    return jobs[task_id]


def load_entry(archive: zipfile.ZipFile, name: str) -> npt.NDArray[Any]:
    return np.load(io.BytesIO(archive.read(name)), allow_pickle=False)


# -- authentication ----------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/check_ping"),
    ("POST", "/check_model"),
    ("POST", "/processing"),
    ("GET", "/_jobs"),
    ("GET", "/_control"),
    ("POST", "/_control"),
]


def test_every_route_is_covered_by_the_auth_test(client: TestClient) -> None:
    routes = {(m, r.path) for r in client.app.routes for m in getattr(r, "methods", ())}  # type: ignore[attr-defined]
    assert routes == set(ENDPOINTS)


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
@pytest.mark.parametrize(("method", "path"), [*ENDPOINTS, ("GET", "/no_such_path")])
def test_requests_without_the_token_get_401_and_change_nothing(
    client: TestClient, headers: dict[str, str], method: str, path: str
) -> None:
    task_id = make_upload(to_process(client), make_volume())
    bodies = {
        "/processing": {"input_file": f"{task_id}.zip", "client_id": SITE, "metadata": {}},
        "/_control": {"fail_5xx": True},
        "/check_model": CHECK_MODEL_FIELDS,
    }
    client.headers.pop("Authorization")
    response = client.request(method, path, json=bodies.get(path), headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    client.headers.update(AUTH)
    assert client.get("/_jobs").json() == {"jobs": []}
    assert client.get("/_control").json()["fail_5xx"] is False


def test_malformed_body_without_token_is_401_not_422(client: TestClient) -> None:
    response = client.post("/check_model", content=b"{not json", headers={"Authorization": ""})
    assert response.status_code == 401


def test_check_ping(client: TestClient) -> None:
    assert client.get("/check_ping").status_code == 200


# -- licences ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, 200),
        ({"Radiofarmaco": "psma 11"}, 200),  # spelling variants of a licensed tracer
        ({"id_client": "site-expired"}, 405),
        ({"id_client": "unknown-site"}, 405),
        ({"Radiofarmaco": "DOTATATE"}, 406),
        ({"ManufacturerModelName": "Discovery MI"}, 407),
    ],
)
def test_check_model_licence_codes(
    client: TestClient, changes: dict[str, Any], status: int
) -> None:
    response = client.post("/check_model", json={**CHECK_MODEL_FIELDS, **changes})
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["algorithm"] == "siemens"
    else:
        assert response.json()["detail"]


@pytest.mark.parametrize(
    "changes",
    [
        {"VoxelSpacing": [2.0, 2.0]},
        {"Subsets": -1},
        {"SliceThickness": 0},
        {"Radiofarmaco": ""},
        {"Iteraciones": "many"},
    ],
)
def test_check_model_rejects_malformed_bodies(client: TestClient, changes: dict[str, Any]) -> None:
    assert client.post("/check_model", json={**CHECK_MODEL_FIELDS, **changes}).status_code == 422


def test_check_model_rejects_missing_fields_and_non_json(client: TestClient) -> None:
    body = {k: v for k, v in CHECK_MODEL_FIELDS.items() if k != "HalfLife"}
    assert client.post("/check_model", json=body).status_code == 422
    assert client.post("/check_model", content=b"{oops").status_code == 422


def test_permissive_default_accepts_any_site_and_model_with_common_tracers() -> None:
    table = LicenceTable.permissive()
    site = table.site("whatever-site")
    assert site is not None and site.active
    assert site.algorithm_for("Any Scanner", "") is not None
    for tracer in ("FDG", "PSMA-11", "DOTATATE", "Rb-82", "NaF"):
        assert site.allows_radiopharmaceutical(tracer), tracer
    assert not site.allows_radiopharmaceutical("Unobtainium")


def test_licence_file_and_env_switches_are_read_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "licences.json"
    path.write_text(json.dumps(LICENCES))
    monkeypatch.setenv("PETRAY_SHARED_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("PETRAY_REMOTE_TOKEN", "from-env")
    monkeypatch.setenv("PETRAY_CALLBACK_URL", "http://127.0.0.1:9/process_ready")
    monkeypatch.setenv("PETRAY_REFERENCE_REFUSE", "406")
    monkeypatch.setenv("PETRAY_REFERENCE_SLOW", "1.5")
    import argparse

    config = config_from_args(argparse.Namespace(licenses=str(path), malicious="nan"))
    assert config.token == "from-env"
    assert config.shared_dir == tmp_path / "shared"
    assert config.callback_url == "http://127.0.0.1:9/process_ready"
    assert config.switches.refuse == 406 and config.switches.slow == 1.5
    assert config.switches.malicious is MaliciousMode.NAN
    assert config.licences.site("site-expired") is not None
    assert config.licences.site("unknown-site") is None


# -- switches ----------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [405, 406, 407])
def test_refuse_switch(client: TestClient, code: int) -> None:
    assert client.post("/_control", json={"refuse": code}).json()["refuse"] == code
    assert client.post("/check_model", json=CHECK_MODEL_FIELDS).status_code == code
    client.post("/_control", json={"refuse": None})
    assert client.post("/check_model", json=CHECK_MODEL_FIELDS).status_code == 200


def test_fail_5xx_switch_covers_check_model_and_processing(client: TestClient) -> None:
    task_id = make_upload(to_process(client), make_volume())
    client.post("/_control", json={"fail_5xx": True})
    assert client.post("/check_model", json=CHECK_MODEL_FIELDS).status_code == 503
    body = {"input_file": f"{task_id}.zip", "client_id": SITE, "metadata": {}}
    assert client.post("/processing", json=body).status_code == 503
    assert client.get("/_jobs").json() == {"jobs": []}
    assert client.get("/check_ping").status_code == 200


@pytest.mark.parametrize(
    "body", [{"refuse": 404}, {"slow": -1}, {"malicious": "gremlins"}, {"no_such_switch": 1}]
)
def test_control_rejects_invalid_switches(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/_control", json=body).status_code == 422
    assert client.get("/_control").json() == Switches().model_dump(mode="json")


# -- processing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "input_file",
    [
        "../" + "a" * 32 + ".zip",
        "a" * 32 + ".zip/../x",
        "a" * 31 + ".zip",
        "g" * 32 + ".zip",
        "a" * 32 + ".npy",
        "a" * 32 + ".zip\n",
        "/etc/" + "a" * 32 + ".zip",
        "",
    ],
)
def test_processing_refuses_anything_but_a_task_archive_name(
    client: TestClient, input_file: str
) -> None:
    body = {"input_file": input_file, "client_id": SITE, "metadata": {}}
    assert client.post("/processing", json=body).status_code == 422
    assert client.get("/_jobs").json() == {"jobs": []}


def test_processing_of_a_missing_archive_is_404(client: TestClient) -> None:
    body = {"input_file": f"{uuid.uuid4()}.zip", "client_id": SITE, "metadata": {}}
    assert client.post("/processing", json=body).status_code == 404


def test_worker_end_to_end_writes_a_valid_result_and_calls_back(
    client: TestClient, receiver: CallbackReceiver
) -> None:
    volume = make_volume()
    task_id = make_upload(to_process(client), volume)
    job = run_job(client, task_id)
    assert job["state"] == "done" and job["runs"] == 1 and job["callback"] == "sent"

    result = processed(client) / f"{task_id}.zip"
    assert sorted(p.name for p in processed(client).iterdir()) == [result.name]  # no temp left
    with zipfile.ZipFile(result) as archive:
        assert sorted(archive.namelist()) == sorted([DENOISED_NAME, NOISE_NAME, METADATA_NAME])
        denoised = load_entry(archive, DENOISED_NAME)
        noise = load_entry(archive, NOISE_NAME)
        metadata = json.loads(archive.read(METADATA_NAME))
        for name in (DENOISED_NAME, NOISE_NAME):
            assert metadata["sha256"][name] == hashlib.sha256(archive.read(name)).hexdigest()
    assert denoised.dtype == np.float32 and denoised.shape == volume.shape
    assert noise.dtype == np.float32 and noise.shape == volume.shape
    assert np.allclose(noise, volume - denoised, atol=1e-3)
    assert not np.allclose(denoised, volume)  # not an identity copy
    assert metadata["task_id"] == task_id and metadata["algorithm"]["name"] == ALGORITHM_NAME
    # The upload belongs to petray's task: only petray deletes it.
    assert (to_process(client) / f"{task_id}.zip").exists()
    assert receiver.calls == [
        {"path": "/process_ready", "auth": f"Bearer {CALLBACK_TOKEN}", "body": {"task_id": task_id}}
    ]


def test_processing_is_idempotent(client: TestClient, receiver: CallbackReceiver) -> None:
    task_id = make_upload(to_process(client), make_volume())
    body = {"input_file": f"{task_id}.zip", "client_id": SITE, "metadata": CHECK_MODEL_FIELDS}
    first = client.post("/processing", json=body)
    second = client.post("/processing", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == {"response": "Processing"}
    assert client.app.state.worker.wait_idle(JOB_TIMEOUT_S)  # type: ignore[attr-defined]
    jobs = client.get("/_jobs").json()["jobs"]
    assert len(jobs) == 1
    assert jobs[0]["runs"] == 1 and jobs[0]["submissions"] == 2


def test_resubmitting_a_done_task_only_repeats_the_callback(
    client: TestClient, receiver: CallbackReceiver
) -> None:
    task_id = make_upload(to_process(client), make_volume())
    run_job(client, task_id)
    job = run_job(client, task_id)
    assert job["runs"] == 1 and job["submissions"] == 2
    assert [c["body"]["task_id"] for c in receiver.calls] == [task_id, task_id]


def test_callback_is_retried_while_petray_answers_5xx(
    client: TestClient, receiver: CallbackReceiver
) -> None:
    receiver.statuses = [503, 502]
    job = run_job(client, make_upload(to_process(client), make_volume()))
    assert job["callback"] == "sent" and job["callback_attempts"] == 3
    assert len(receiver.calls) == 3


def test_callback_gives_up_on_a_4xx(client: TestClient, receiver: CallbackReceiver) -> None:
    receiver.statuses = [404]
    job = run_job(client, make_upload(to_process(client), make_volume()))
    assert job["callback"] == "rejected" and job["callback_status"] == 404
    assert len(receiver.calls) == 1


def test_drop_callback_switch(client: TestClient, receiver: CallbackReceiver) -> None:
    client.post("/_control", json={"drop_callback": True})
    task_id = make_upload(to_process(client), make_volume())
    job = run_job(client, task_id)
    assert job["state"] == "done" and job["callback"] == "dropped"
    assert (processed(client) / f"{task_id}.zip").exists()
    assert receiver.calls == []


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"shape": [1, 2, 3]}, "shape"),
        ({"dtype": "float64"}, "float32"),
        ({"task_id": "f" * 32}, "task_id"),
    ],
)
def test_a_bad_upload_fails_the_job_without_result_or_callback(
    client: TestClient, receiver: CallbackReceiver, overrides: dict[str, Any], reason: str
) -> None:
    task_id = make_upload(to_process(client), make_volume(), metadata_overrides=overrides)
    job = run_job(client, task_id)
    assert job["state"] == "failed" and reason in job["error"]
    assert list(processed(client).iterdir()) == []
    assert receiver.calls == []


def test_slow_switch_delays_the_job(client: TestClient) -> None:
    client.post("/_control", json={"slow": 0.5})
    job = run_job(client, make_upload(to_process(client), make_volume()))
    assert job["state"] == "done" and job["seconds"] >= 0.5


# -- malicious archives ------------------------------------------------------------------------
def _entry_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


@pytest.mark.parametrize("mode", list(MaliciousMode))
def test_malicious_modes_write_the_advertised_bad_archive(
    client: TestClient, receiver: CallbackReceiver, mode: MaliciousMode
) -> None:
    limit = 64 * 1024**2
    client.post("/_control", json={"malicious": mode.value, "oversized_bytes": limit})
    volume = make_volume()
    task_id = make_upload(to_process(client), volume)
    job = run_job(client, task_id)
    assert job["state"] == "done" and job["malicious"] == mode.value
    assert job["callback"] == "sent"  # bad archives are announced like good ones
    path = processed(client) / f"{task_id}.zip"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        infos = archive.infolist()
        if mode is MaliciousMode.TRAVERSAL:
            assert TRAVERSAL_ENTRY in names
        elif mode is MaliciousMode.SYMLINK:
            links = [i.filename for i in infos if _entry_is_symlink(i)]
            assert links == [SYMLINK_ENTRY]
            assert archive.read(SYMLINK_ENTRY) == b"/etc/passwd"
        elif mode is MaliciousMode.OVERSIZED:
            assert sum(i.file_size for i in infos) > limit
            assert path.stat().st_size < limit // 100
        else:
            denoised = load_entry(archive, DENOISED_NAME)
            if mode is MaliciousMode.WRONG_SHAPE:
                assert denoised.shape != volume.shape
            elif mode is MaliciousMode.NAN:
                assert np.isnan(denoised).any()
            elif mode is MaliciousMode.NOISE_NAN:
                assert np.isfinite(denoised).all()
                assert np.isnan(load_entry(archive, NOISE_NAME)).any()
            elif mode is MaliciousMode.WRONG_DTYPE:
                assert denoised.dtype == np.float64
        if mode is not MaliciousMode.TRAVERSAL:
            assert not any(n.startswith("..") or n.startswith("/") for n in names)


# -- the denoiser ------------------------------------------------------------------------------
def _step_phantom(seed: int = 1) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    clean = np.full((24, 48, 48), 100.0, dtype=np.float32)
    clean[:, :, 24:] = 400.0
    return clean, clean + rng.normal(0, 20, clean.shape).astype(np.float32)


def test_noise_estimate_is_close_to_the_truth() -> None:
    _, noisy = _step_phantom()
    assert estimate_noise_sigma(noisy) == pytest.approx(20.0, rel=0.1)


def test_denoiser_reduces_noise_and_preserves_the_edge() -> None:
    clean, noisy = _step_phantom()
    out = guided_denoise(noisy)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    # Flat regions on both sides of the edge: noise down at least threefold.
    assert out[:, :, 4:18].std() < noisy[:, :, 4:18].std() / 3
    assert out[:, :, 30:44].std() < noisy[:, :, 30:44].std() / 3
    # Overall closer to the truth.
    rmse_in = float(np.sqrt(np.mean((noisy - clean) ** 2)))
    rmse_out = float(np.sqrt(np.mean((out - clean) ** 2)))
    assert rmse_out < rmse_in / 2
    # The step stays sharp: the voxels right beside it keep >= 90% of their side's level
    # relative to the 300 Bq/ml step (a Gaussian with the same noise reduction smears it over
    # several voxels).
    profile = out[4:-4, 4:-4, :].mean(axis=(0, 1))
    assert profile[23] < 100 + 0.1 * 300
    assert profile[24] > 400 - 0.1 * 300
    assert profile[30] == pytest.approx(400, abs=5)
    assert profile[17] == pytest.approx(100, abs=5)


def test_slab_processing_matches_whole_volume_processing() -> None:
    _, noisy = _step_phantom()
    whole = guided_denoise(noisy, GuidedFilterParams(slab=1000, threads=1))
    slabs = guided_denoise(noisy, GuidedFilterParams(slab=5, threads=2))
    assert np.allclose(whole, slabs, atol=1e-3)


def test_denoiser_refuses_non_finite_input() -> None:
    _, noisy = _step_phantom()
    noisy[3, 3, 3] = np.nan
    with pytest.raises(ValueError):
        guided_denoise(noisy)
