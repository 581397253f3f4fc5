"""``petray check`` as an operator runs it (a subprocess), with good and bad settings, and the
preflight's pure checks; ``petray start`` refusing with one line; ``petray migrate``; the
HTTPS-only login refusal; the shipped deploy/ files."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from petray.settings import Settings
from petray.site.preflight import Verdict, check_addresses, check_environment, check_ports
from serve.reference.main import running_reference
from tests.support.app import build_harness, csrf_of
from tests.support.peers import LOOPBACK, free_port, start_storescp

REPO = Path(__file__).resolve().parents[1]
_ENTRY_POINT = Path(sys.executable).with_name("petray")
PETRAY = [str(_ENTRY_POINT)] if _ENTRY_POINT.exists() else [sys.executable, "-m", "petray.cli"]
LINE = re.compile(r"^(OK|WARN|FAIL)\s+\S")


def _petray(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PETRAY_")}
    return subprocess.run(
        [*PETRAY, *args],
        env={**clean, "PETRAY_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _checks(run: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    report = json.loads(run.stdout)
    return {check["name"]: check for check in report["checks"]}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """The reference service for a petray with default tokens and its home in tmp_path/home."""
    with running_reference(Settings(home=tmp_path / "home"), port=free_port()) as running:
        yield running.url


def test_check_passes_on_a_ready_site_and_echoes_destinations(tmp_path: Path, service: str) -> None:
    home = tmp_path / "home"
    env = {
        "PETRAY_REMOTE_URL": service,
        "PETRAY_DICOM_PORT": str(free_port()),
        "PETRAY_HTTP_PORT": str(free_port()),
    }
    assert _petray(home, "migrate", **env).returncode == 0
    with start_storescp(tmp_path / "pacs") as pacs:
        added = _petray(
            home,
            "device",
            "add",
            "pacs",
            "--ae-title",
            pacs.aet,
            "--host",
            LOOPBACK,
            "--port",
            str(pacs.port),
            "--destination",
            **env,
        )
        assert added.returncode == 0, added.stderr
        run = _petray(home, "check", **env)
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert all(LINE.match(line) for line in lines[:-1]), run.stdout
        assert lines[-1].startswith("petray can run here")
        checks = _checks(_petray(home, "check", "--json", **env))
    assert checks["echo pacs"]["verdict"] == "ok"
    assert checks["service"]["verdict"] == "ok"
    assert checks["database"]["verdict"] == "ok"
    assert checks["shared folder"]["verdict"] == "ok"


def test_check_fails_with_bad_settings_one_line_each(tmp_path: Path) -> None:
    home = tmp_path / "home"
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    try:
        run = _petray(
            home,
            "check",
            "--json",
            PETRAY_HTTP_PORT=str(taken.getsockname()[1]),
            PETRAY_DICOM_PORT=str(free_port()),
            PETRAY_REMOTE_URL=f"http://127.0.0.1:{free_port()}",
            PETRAY_CALBACK_TOKEN="typo",
            PETRAY_PRODUCTION="true",
        )
    finally:
        taken.close()
    assert run.returncode == 1, run.stdout + run.stderr
    checks = _checks(run)
    assert checks["environment"]["verdict"] == "warn"
    assert "PETRAY_CALLBACK_TOKEN" in str(checks["environment"]["detail"])  # did you mean
    assert checks["secrets"]["verdict"] == "fail"
    assert "PETRAY_SECRET_KEY" in str(checks["secrets"]["detail"])
    assert checks["ports"]["verdict"] == "fail"
    assert checks["service"]["verdict"] == "fail"
    assert checks["dicom bind"]["verdict"] == "warn"  # production on loopback
    assert "Traceback" not in run.stderr


def test_check_reports_invalid_settings_and_an_unreachable_database(tmp_path: Path) -> None:
    invalid = _petray(tmp_path / "home", "check", PETRAY_HTTP_PORT="99999")
    assert invalid.returncode == 1
    assert invalid.stdout.startswith("FAIL settings") and "PETRAY_HTTP_PORT" in invalid.stdout
    url = f"postgresql+psycopg://petray:secret@127.0.0.1:{free_port()}/petray"
    unreachable = _petray(tmp_path / "home", "check", "--json", PETRAY_DATABASE_URL=url)
    database = _checks(unreachable)["database"]
    assert database["verdict"] == "fail" and "unreachable" in str(database["detail"])
    assert "secret" not in str(database["detail"])  # the password never shown
    assert "Traceback" not in unreachable.stderr


def test_start_refuses_in_a_second_with_one_line_per_problem(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://petray@127.0.0.1:{free_port()}/petray"
    run = _petray(tmp_path / "home", "start", PETRAY_DATABASE_URL=url)
    assert run.returncode == 2, run.stdout + run.stderr
    errors = run.stderr.splitlines()
    assert any(line.startswith("petray: FAIL database") for line in errors), run.stderr
    assert errors[-1] == "petray: not started (`petray check` runs every check)"
    assert "Traceback" not in run.stderr and "starting Ray" not in run.stdout


def test_migrate_upgrades_once(tmp_path: Path) -> None:
    first = _petray(tmp_path / "home", "migrate")
    assert first.returncode == 0 and "upgraded from revision (empty)" in first.stdout
    second = _petray(tmp_path / "home", "migrate")
    assert second.returncode == 0 and "already at revision" in second.stdout


# --- pure checks ------------------------------------------------------------------------------


def test_unknown_environment_names_are_flagged_with_a_suggestion() -> None:
    check = check_environment(
        {"PETRAY_DICOM_PORT": "104", "PETRAY_DICM_BIND": "0.0.0.0", "PETRAY_PASSWORD": "x"}
    )
    assert check.verdict == Verdict.WARN
    assert check.detail == "unknown, ignored: PETRAY_DICM_BIND (did you mean PETRAY_DICOM_BIND?)"
    assert check_environment({"PETRAY_REFERENCE_SLOW": "1"}).verdict == Verdict.OK


def test_callback_url_on_loopback_with_a_remote_service_is_a_warning(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    callback = check_addresses(settings, "https://denoise.example.com")[0]
    assert callback.verdict == Verdict.WARN and "PETRAY_CALLBACK_URL" in callback.detail
    remote_ok = Settings(
        home=tmp_path, http_host="0.0.0.0", callback_url="https://10.1.2.3:8000/process_ready"
    )
    assert check_addresses(remote_ok, "https://denoise.example.com")[0].verdict == Verdict.OK
    listens_locally = Settings(home=tmp_path, callback_url="http://10.1.2.3:8000/process_ready")
    warned = check_addresses(listens_locally, "https://denoise.example.com")[0]
    assert warned.verdict == Verdict.WARN and "PETRAY_HTTP_HOST" in warned.detail


def test_https_settings_make_the_callback_url_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    settings = Settings(home=tmp_path, http_tls_cert=cert, http_tls_key=key, http_port=8443)
    assert settings.resolved_callback_url == "https://127.0.0.1:8443/process_ready"
    with pytest.raises(ValueError, match="go together"):
        Settings(home=tmp_path, http_tls_cert=cert)
    with pytest.raises(ValueError, match="needs a TLS listener"):
        Settings(home=tmp_path, dicom_plain=False)


def test_ports_check_names_every_taken_port(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, metrics_port=9108)
    check = check_ports(settings, 11112, is_free=lambda _host, port: port != 9108)
    assert check.verdict == Verdict.FAIL and check.fatal
    assert "metrics 127.0.0.1:9108" in check.detail and "11112" not in check.detail


# --- console login over plain HTTP in production ------------------------------------------------


def test_production_login_over_plain_http_says_why_instead_of_looping(tmp_path: Path) -> None:
    for h in build_harness(tmp_path, production=True, secret_key="k" * 40):
        client: TestClient = h.client
        page = client.get("/login")
        assert "over plain HTTP" in page.text and "PETRAY_HTTP_TLS_CERT" in page.text
        posted = client.post(
            "/login",
            data={"username": "admin", "password": "x", "csrf_token": csrf_of(page.text)},
        )
        assert posted.status_code == 403 and "over plain HTTP" in posted.text
        # Behind a TLS proxy the console is fine (the header only picks the message).
        proxied = client.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "over plain HTTP" not in proxied.text


# --- shipped deploy/ files ----------------------------------------------------------------------


def test_grafana_dashboard_names_only_metrics_petray_defines() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana-petray.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"ray_(petray_[a-z_]+?)(?:_total)?\b", exprs))
    defined = set(re.findall(r'"(petray_[a-z_]+)"', _actor_sources()))
    assert used and used <= defined, used - defined


def _actor_sources() -> str:
    return "\n".join(p.read_text() for p in (REPO / "actors").glob("*.py"))


def test_systemd_unit_restarts_on_failure_and_verifies() -> None:
    unit = (REPO / "deploy" / "petray.service").read_text()
    assert "Restart=on-failure" in unit and "ExecStart=/opt/petray/.venv/bin/petray start" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    run = subprocess.run(
        ["systemd-analyze", "verify", str(REPO / "deploy" / "petray.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    # On a machine without /opt/petray only the missing program is reported.
    problems = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and "is not executable" not in line
    ]
    assert problems == [], problems
