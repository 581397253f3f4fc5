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

from petray.ray_leftovers import GatewayRecord, find_run_processes, read_record, record_path
from tests.support.peers import free_port, run_echoscu

pytestmark = [pytest.mark.ray, pytest.mark.peers]
START_TIMEOUT_S = 120


def _env(home: Path, dicom_port: int, http_port: int) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PETRAY_", "RAY_ADDRESS"))},
        "PETRAY_HOME": str(home),
        "PETRAY_DICOM_PORT": str(dicom_port),
        "PETRAY_HTTP_PORT": str(http_port),
        "PETRAY_DASHBOARD": "false",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _start(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``petray start`` in a session of its own, like a service manager starts it."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "petray.cli", "start"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_running(process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while "petray running" not in log_path.read_text():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


def _run_processes(home: Path) -> tuple[GatewayRecord, list[int]]:
    record = read_record(record_path(home))
    assert record is not None
    return record, find_run_processes(record.run_id, record.session_dir)


def _until_gone(home: Path, bound_s: float) -> float:
    """Seconds until no process of the recorded run is left; fails after ``bound_s``."""
    started = time.monotonic()
    while True:
        _record, left = _run_processes(home)
        if not left:
            return time.monotonic() - started
        assert time.monotonic() - started < bound_s, f"still running: {left}"
        time.sleep(0.2)


def test_one_gateway_per_home_and_no_ray_left_after_a_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = _start(_env(home, free_port(), free_port()), tmp_path / "first.log")
    processes = [first]
    try:
        _wait_running(first, tmp_path / "first.log")
        # A second gateway on the same home, other ports: refused before it touches anything.
        second = subprocess.run(
            [sys.executable, "-m", "petray.cli", "start"],
            env=_env(home, free_port(), free_port()),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [
            f"petray: another gateway is running on {home} (pid {first.pid}); stop it first"
        ]
        record, ray_processes = _run_processes(home)
        assert record.pid == first.pid and record.session_dir
        # GCS, raylet, dashboard, log monitor, agents and the pipeline and Serve actors.
        assert len(ray_processes) >= 15, ray_processes

        os.killpg(first.pid, signal.SIGKILL)  # the power cut: the group this test started
        first.wait(timeout=30)
        gone_after = _until_gone(home, bound_s=30)
        # The watchdog writes its line once it has finished killing: give it a moment.
        deadline = time.monotonic() + 10
        while "the gateway (pid" not in (tmp_path / "first.log").read_text():
            assert time.monotonic() < deadline, "the watchdog said nothing"
            time.sleep(0.1)

        # The next start on the same home serves DICOM and HTTP, then stops cleanly on SIGTERM.
        dicom_port, http_port = free_port(), free_port()
        third = _start(_env(home, dicom_port, http_port), tmp_path / "third.log")
        processes.append(third)
        _wait_running(third, tmp_path / "third.log")
        third_record, third_processes = _run_processes(home)
        assert third_record.pid == third.pid and third_record.run_id != record.run_id
        assert third_processes
        assert f"PETRAY@127.0.0.1:{dicom_port}" in (tmp_path / "third.log").read_text()
        echo = run_echoscu(host="127.0.0.1", port=dicom_port, called_ae="PETRAY")
        assert echo.returncode == 0, echo.stderr
        # Degraded (no service, no destination), not down. Each actor has 0.5 s to answer the
        # health check; in the first seconds after the start, with the killed run's processes
        # still being reaped on two cores, some may not yet: allow the start a moment to settle.
        deadline = time.monotonic() + 30
        while True:
            health = httpx.get(f"http://127.0.0.1:{http_port}/api/v1/health", timeout=10)
            if health.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert health.status_code == 200, health.text
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=90) == 0
        with pytest.raises(httpx.TransportError):  # once stopped, nothing listens any more
            httpx.get(f"http://127.0.0.1:{http_port}/api/v1/health", timeout=2)
        # A clean stop leaves nothing either (the watchdog removes slow-exiting workers).
        clean_after = _until_gone(home, bound_s=30)
        print(f"Ray gone {gone_after:.1f} s after SIGKILL, {clean_after:.1f} s after SIGTERM")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # only process groups this test started
                process.wait(timeout=30)
