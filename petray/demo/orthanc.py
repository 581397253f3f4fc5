"""Orthanc on loopback, started and stopped by petray: the demo's destination and the tests' peer.

Debian's Orthanc leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in its environment;
without it every instance costs ~45 ms. Orthanc listens on all interfaces (ARCHITECTURE.md
accepts that); nothing here connects anywhere but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

LOOPBACK = "127.0.0.1"
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
# Debian's orthanc-dicomweb (issue 15): STOW-RS, QIDO-RS and WADO-RS under DICOMWEB_ROOT.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # a free port can be taken by someone else between probe and bind


# Listening ports are drawn below the kernel's ephemeral range (32768-60999 on Linux), which
# every outgoing connection takes its local port from, and above Ray's worker ports
# (10002-19999): a port probed free there is not taken by a client a moment later.
LISTEN_PORTS = range(20000, 32000)


# Ports this process handed out: a caller often asks for several before it binds any (a
# gateway's DICOM and HTTP ports, then a peer's), so a probe alone could return one twice.
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now and not handed out before by this process (the
    caller retries if another process takes it before use)."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def peer_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate a process this module started (and only that one)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def wait_for(condition: Any, process: subprocess.Popen[Any], what: str, log: Path) -> bool:
    """Poll ``condition`` until true; False if the process died (e.g. its port was taken)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{what} did not start in {STARTUP_TIMEOUT_S} s; log: {log}")


@dataclass
class OrthancPeer:
    """A running Orthanc on loopback, driven through its REST API."""

    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    client: httpx.Client = field(repr=False)

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb service root (with the plugin loaded): STOW-RS posts to ``/studies``."""
        return self.http_url + DICOMWEB_ROOT

    def changes(self) -> list[dict[str, Any]]:
        """Orthanc's change log, oldest first (every page of it)."""
        found: list[dict[str, Any]] = []
        since = 0
        while True:
            page = self._json("GET", "/changes", params={"since": since, "limit": 1000})
            found += page["Changes"]
            if page["Done"]:
                return found
            since = page["Last"]

    @property
    def host(self) -> str:
        return LOOPBACK

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def instances(self) -> list[str]:
        """Orthanc ids of every stored instance."""
        return list(self._json("GET", "/instances"))

    def series(self) -> list[dict[str, Any]]:
        """Every stored series, expanded (``MainDicomTags``, ``Instances``, ``ID``...)."""
        return list(self._json("GET", "/series", params={"expand": ""}))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/instances/{instance_id}/simplified-tags"))

    def sop_instance_uids(self) -> set[str]:
        return {
            self._json("GET", f"/instances/{iid}")["MainDicomTags"]["SOPInstanceUID"]
            for iid in self.instances()
        }

    def instance_dataset(self, instance_id: str) -> Dataset:
        response = self.client.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return pydicom.dcmread(io.BytesIO(response.content))

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        self._json("PUT", f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    def store_to(self, modality: str, resources: Sequence[str]) -> dict[str, Any]:
        """Orthanc as the SENDER: C-STORE ``resources`` (any level) to a declared modality."""
        return dict(
            self._json(
                "POST",
                f"/modalities/{modality}/store",
                json={"Resources": list(resources), "Synchronous": True},
            )
        )

    def echo(self, modality: str) -> bool:
        return self.client.post(f"/modalities/{modality}/echo", json={}).status_code == 200

    def upload(self, path: Path) -> dict[str, Any]:
        """Store a file through REST (POST /instances); returns Orthanc's answer (``ID``...)."""
        return dict(self._json("POST", "/instances", content=Path(path).read_bytes()))

    def clear(self) -> None:
        for patient in self._json("GET", "/patients"):
            self._json("DELETE", f"/patients/{patient}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def _orthanc_config(
    workdir: Path,
    *,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: Mapping[str, tuple[str, str, int]],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Name": "petray-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomScuTimeout": 10,
        # Orthanc keeps its outgoing associations open 5 s by default, which would make
        # consecutive store_to calls reuse one association and skew association counts.
        "DicomAssociationCloseDelay": 0,
        "DicomModalities": {name: list(spec) for name, spec in modalities.items()},
        "DicomModalitiesInDatabase": False,
        "OrthancPeers": {},
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "StableAge": 1,
        "ExecuteLuaEnabled": False,
        "OverwriteInstances": False,
    }
    config.update(overrides)
    return config


@contextlib.contextmanager
def start_orthanc(
    workdir: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    dicomweb: bool = False,
    users: Mapping[str, str] | None = None,
) -> Iterator[OrthancPeer]:
    """Run Orthanc with a private storage in ``workdir`` until the block ends.

    ``modalities`` maps a name to ``(aet, host, port)``; ``config_overrides`` replaces any
    key of the generated configuration (e.g. ``{"DicomAlwaysAllowStore": False}``).
    ``dicomweb`` loads the DICOMweb plugin; ``users`` (name -> password) turns on HTTP Basic
    authentication (the peer's own client logs in as the first). No HTTPS: Debian 12's Orthanc
    1.10.1 dies (SIGSEGV) on its first HTTPS request, whatever the certificate.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if dicomweb:
        extra["Plugins"] = [str(DICOMWEB_PLUGIN)]
        extra["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT + "/"}
    if users:
        extra["AuthenticationEnabled"] = True
        extra["RegisteredUsers"] = dict(users)
    auth = httpx.BasicAuth(*next(iter(users.items()))) if users else None
    for attempt in range(START_ATTEMPTS):
        dicom_port, http_port = free_port(), free_port()
        config = _orthanc_config(
            workdir,
            aet=aet,
            dicom_port=dicom_port,
            http_port=http_port,
            modalities=modalities or {},
            overrides={**extra, **(config_overrides or {})},
        )
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = workdir / f"orthanc-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(ORTHANC_BIN), str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=peer_env(),
                cwd=workdir,
            )
        client = httpx.Client(base_url=f"http://{LOOPBACK}:{http_port}", timeout=30.0, auth=auth)

        def ready(client: httpx.Client = client, port: int = dicom_port) -> bool:
            try:
                answered = client.get("/system").status_code == 200
            except httpx.TransportError:
                return False
            return answered and port_open(port)

        try:
            started = wait_for(ready, process, "Orthanc", log_path)
        except BaseException:
            client.close()
            raise
        if not started:
            client.close()
            continue
        peer = OrthancPeer(
            aet=aet,
            dicom_port=dicom_port,
            http_port=http_port,
            workdir=workdir,
            process=process,
            log_path=log_path,
            client=client,
        )
        try:
            yield peer
        finally:
            client.close()
            stop_process(process)
        return
    raise RuntimeError(f"Orthanc could not start after {START_ATTEMPTS} attempts; see {workdir}")
