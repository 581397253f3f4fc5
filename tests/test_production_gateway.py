"""A production-style ``petray start`` (issue 10), started once as an operator starts it:
DICOM over TLS only, console over HTTPS, fixed metrics port, JSON logs; then a DCMTK
``storescu +tls`` series, the HTTPS console and API, and Debian's Prometheus scraping the
gateway with the shipped deploy/prometheus.yml.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from petray.demo.synth import make_pet_series, write_series
from tests.support.peers import free_port, run_storescu
from tests.support.tls_certs import Pki, make_pki

pytestmark = [pytest.mark.ray, pytest.mark.peers]
START_TIMEOUT_S = 180
PROMETHEUS = Path("/usr/bin/prometheus")
REPO = Path(__file__).resolve().parents[1]
SLICES = 8
# Ray exports an application metric NAME as ray_NAME (counters as ray_NAME_total); these
# gauges exist from the first refresh, whatever the gateway has done.
SERIES_NAMES = (
    "ray_petray_free_disk_bytes",
    "ray_petray_scp_associations_open",
    "ray_petray_oldest_open_task_seconds",
)


@dataclass
class RunningGateway:
    process: subprocess.Popen[bytes]
    log: Path
    pki: Pki
    tls_port: int
    http_port: int
    metrics_port: int
    home: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def https(self) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.pki.ca))
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.http_port}", verify=verify, timeout=10
        )


def _env(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))}
    return {**clean, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **values}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("production")
    pki = make_pki(root / "pki")
    home = root / "home"
    tls_port, http_port, metrics_port = free_port(), free_port(), free_port()
    env = _env(
        PETRAY_HOME=str(home),
        PETRAY_DICOM_PLAIN="false",
        PETRAY_DICOM_TLS_PORT=str(tls_port),
        PETRAY_DICOM_TLS_CERT=str(pki.server.cert),
        PETRAY_DICOM_TLS_KEY=str(pki.server.key),
        PETRAY_HTTP_PORT=str(http_port),
        PETRAY_HTTP_TLS_CERT=str(pki.server.cert),
        PETRAY_HTTP_TLS_KEY=str(pki.server.key),
        PETRAY_METRICS_PORT=str(metrics_port),
        PETRAY_DASHBOARD="false",
        PETRAY_LOG_FORMAT="json",
        PETRAY_FSYNC="false",
    )
    log = root / "start.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "petray.cli", "start"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningGateway(process, log, pki, tls_port, http_port, metrics_port, home)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "petray running" not in running.output():
            assert process.poll() is None, running.output()
            assert time.monotonic() < deadline, running.output()
            time.sleep(0.3)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # only the group this test started
                process.wait(timeout=30)


def test_start_says_what_it_does_and_where_it_listens(gateway: RunningGateway) -> None:
    output = gateway.output()
    steps = ["starting Ray…", "starting the pipeline…", "pipeline ready"]
    positions = [output.find(step) for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), output
    assert f"listening on DICOM TLS PETRAY@127.0.0.1:{gateway.tls_port}" in output
    assert f"listening on https://127.0.0.1:{gateway.http_port}/" in output
    assert f"Prometheus metrics http://127.0.0.1:{gateway.metrics_port}/metrics" in output
    assert "listening on DICOM PETRAY" not in output  # the plain listener is off
    assert "\x1b[" not in output  # no terminal colour codes in a service's log


def test_series_over_tls_and_console_over_https(gateway: RunningGateway, tmp_path: Path) -> None:
    files = write_series(make_pet_series(slices=SLICES, rows=16, cols=16), tmp_path / "series")
    tls = ["+tls", str(gateway.pki.client.key), str(gateway.pki.client.cert)]
    sent = run_storescu(
        files,
        port=gateway.tls_port,
        called_ae="PETRAY",
        extra_args=[*tls, "+cf", str(gateway.pki.ca)],
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    with gateway.https() as client:
        health = client.get("/api/v1/health")
        assert health.status_code in (200, 503), health.text  # answered over HTTPS
        login = client.get("/login")
        assert login.status_code == 200 and 'name="csrf_token"' in login.text
        cookie = login.headers.get("set-cookie", "")
        assert "secure" in cookie.lower(), cookie  # served over HTTPS: the cookie says so
    # Plain HTTP on the same port gets no answer from the app.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gateway.http_port}/api/v1/health", timeout=5)


def _json_lines(output: str) -> list[dict[str, object]]:
    parsed = []
    for line in output.splitlines():
        if line.startswith("{"):
            parsed.append(json.loads(line))
    return parsed


def test_log_lines_are_json_when_asked(gateway: RunningGateway) -> None:
    entries = _json_lines(gateway.output())
    assert entries, gateway.output()
    assert all("message" in entry for entry in entries)


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="Debian package prometheus not installed")
def test_prometheus_scrapes_the_gateway_with_the_shipped_configuration(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    shipped = (REPO / "deploy" / "prometheus.yml").read_text()
    assert "127.0.0.1:9108" in shipped
    config = tmp_path / "prometheus.yml"
    config.write_text(shipped.replace("127.0.0.1:9108", f"127.0.0.1:{gateway.metrics_port}"))
    check = subprocess.run(
        ["/usr/bin/promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if shutil.which("promtool"):
        assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    found: dict[str, bool] = {}
    try:
        deadline = time.monotonic() + 90
        api = f"http://127.0.0.1:{port}/api/v1/query"
        while time.monotonic() < deadline and not all(found.get(n) for n in SERIES_NAMES):
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            for name in SERIES_NAMES:
                try:
                    answer = httpx.get(api, params={"query": name}, timeout=5).json()
                except (httpx.HTTPError, ValueError):
                    break
                found[name] = bool(answer.get("data", {}).get("result"))
            time.sleep(1)
        assert all(found.get(n) for n in SERIES_NAMES), (found, _metrics_names(gateway))
        up = httpx.get(api, params={"query": 'up{job="petray"}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"
        # Every query of the shipped Grafana dashboard is valid PromQL for this Prometheus.
        dashboard = json.loads((REPO / "deploy" / "grafana-petray.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                answer = httpx.get(api, params={"query": target["expr"]}, timeout=5).json()
                assert answer["status"] == "success", (panel["title"], answer)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        log.close()


def _metrics_names(gateway: RunningGateway) -> list[str]:
    text = httpx.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).text
    return sorted({line.split("{")[0] for line in text.splitlines() if "petray" in line})
