"""``petray start`` as an operator runs it: a process that serves DICOM and HTTP until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.peers import free_port, run_echoscu

pytestmark = [pytest.mark.ray, pytest.mark.peers]
START_TIMEOUT_S = 120


def test_start_serves_dicom_and_http_then_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))},
        "PETRAY_HOME": str(tmp_path / "home"),
        "PETRAY_DICOM_PORT": str(dicom_port),
        "PETRAY_HTTP_PORT": str(http_port),
        "PETRAY_DASHBOARD": "false",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log = (tmp_path / "start.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "petray.cli", "start"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{http_port}/api/v1/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert health is not None and health.status_code == 200, (
            tmp_path / "start.log"
        ).read_text()
        echo = run_echoscu(host="127.0.0.1", port=dicom_port, called_ae="PETRAY")
        assert echo.returncode == 0, echo.stderr
        # "petray running" is printed once start-up is over and the shutdown handler is set.
        while "petray running" not in (tmp_path / "start.log").read_text():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        output = (tmp_path / "start.log").read_text()
        assert f"PETRAY@127.0.0.1:{dicom_port}" in output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # only the process group this test started
            process.wait(timeout=30)
        log.close()
    # Once stopped, nothing listens any more.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{http_port}/api/v1/health", timeout=2)
