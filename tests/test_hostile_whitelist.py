"""The source whitelist (issue 9): AE title and host, or AE title only per device; the console
says when everyone is refused; every refusal is counted and shown in the activity log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from petray.cli import main
from petray.db.engine import make_engine, make_sessionmaker, unit_of_work
from petray.db.models import Device
from petray.dicom.scp import IngestLimits, SourceDevice, source_refusal
from petray.site.siteconfig import (
    NO_SOURCE_DEVICE,
    add_device,
    everyone_refused,
    get_site_config,
    list_devices,
)
from tests.support.app import AppHarness, csrf_of, harness
from tests.support.peers import LOOPBACK
from tests.test_hostile_dicom import (
    Scp,
    echo_from,
    good_series,
    pet,
    production_pydicom_validation,
    raw_file,
    rejection_outcomes,
    running,
    send_files,
    storescu_ok,
    uids_of,
    with_pixel_length,
)

__all__ = ["harness", "production_pydicom_validation"]  # fixtures
pytestmark = pytest.mark.peers
OTHER_HOST = "127.0.0.2"  # another loopback address stands for another machine


@pytest.fixture
def scp(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> Iterator[Scp]:
    with running(tmp_path / "instances", sqlite_sessions, IngestLimits()) as service:
        yield service


def whitelist(sessions: sessionmaker[Session], *devices: SourceDevice) -> None:
    with unit_of_work(sessions) as session:
        get_site_config(session=session).restrict_sources = True
        for number, device in enumerate(devices):
            add_device(
                session=session,
                name=f"source{number}",
                ae_title=device.ae_title,
                host=device.host,
                port=104,
                is_source=True,
                is_destination=False,
                match_ae_only=device.match_ae_only,
            )


def resolve(host: str) -> frozenset[str]:
    return {"ct.local": frozenset({"10.0.0.7"})}.get(host, frozenset({host}))


@pytest.mark.parametrize(
    ("calling", "peer", "sources", "reason"),
    [
        ("CT1", "10.0.0.9", [SourceDevice("CT1", "ct.local", True)], ""),
        ("CT1", "10.0.0.9", [SourceDevice("CT1", "ct.local", False)], "not from its device's host"),
        ("CT1", "10.0.0.7", [SourceDevice("CT1", "ct.local", False)], ""),
        ("CT2", "10.0.0.7", [SourceDevice("CT1", "ct.local", True)], "is not a configured source"),
        # The same AE title on two devices: the AE-only one admits any address.
        (
            "CT1",
            "10.0.0.9",
            [SourceDevice("CT1", "ct.local"), SourceDevice("CT1", "gone.invalid", True)],
            "",
        ),
        ("CT1", "10.0.0.7", [], NO_SOURCE_DEVICE),
        # Plain (AE title, host) pairs still mean "host must match".
        ("CT1", "10.0.0.9", [("CT1", "ct.local")], "not from its device's host"),
    ],
    ids=[
        "ae-only-any-address",
        "host-bound-other-address",
        "host-bound-own-address",
        "ae-only-other-title",
        "two-devices-one-ae-only",
        "no-device",
        "pair-compat",
    ],
)
def test_match_ae_only_rules(
    calling: str, peer: str, sources: list[SourceDevice], reason: str
) -> None:
    refusal = source_refusal(calling, peer, sources, resolve=resolve)
    assert (reason in refusal) if reason else refusal == ""
    assert bool(refusal) == bool(reason)


def test_an_ae_only_device_stores_from_any_address_a_host_bound_one_does_not(
    scp: Scp, tmp_path: Path
) -> None:
    whitelist(
        scp.sessions,
        SourceDevice("ROAMING", "192.0.2.99", match_ae_only=True),
        SourceDevice("FIXED", LOOPBACK),
    )
    assert echo_from(scp.port, calling_ae="ROAMING", bind=OTHER_HOST)
    assert not echo_from(scp.port, calling_ae="FIXED", bind=OTHER_HOST)
    assert echo_from(scp.port, calling_ae="FIXED")
    paths = good_series(tmp_path / "roaming", seed=21)
    storescu_ok(scp.port, paths, calling_ae="ROAMING")  # from 127.0.0.1, not its 192.0.2.99
    assert scp.uids() == uids_of(paths)
    assert rejection_outcomes(scp) == [
        "rejected: calling AE title 'FIXED' called from 127.0.0.2, not from its device's host"
    ]
    assert scp.service.counters.rejected == 1


def test_every_refusal_is_counted_and_shown_in_the_activity_log(
    scp: Scp, tmp_path: Path, harness: AppHarness
) -> None:
    """Rejected associations and refused instances, as the console's activity log shows them."""
    ds = pet()
    lying = raw_file(
        tmp_path / "short.dcm", with_pixel_length(ds, 100), sop_instance=str(ds.SOPInstanceUID)
    )
    statuses = send_files(scp.port, [lying, lying])
    assert all(s is not None and s.Status != 0 for s in statuses)
    whitelist(scp.sessions)  # on, no source device: everyone refused
    assert not echo_from(scp.port, calling_ae="ANYONE")
    assert scp.service.counters.refused == 2
    assert scp.service.counters.rejected == 1
    # The app of ``harness`` reads its own database: copy the log rows over.
    logs = scp.logs()
    with unit_of_work(harness.sessions) as session:
        for log in logs:
            session.merge(log)
    client = harness.login("viewer")
    entries = client.get("/api/v1/activity", params={"kind": "association"}).json()
    outcomes = [e["outcome"] for e in entries]
    assert any("2 refused" in o and "PixelData is 100 bytes" in o for o in outcomes), outcomes
    assert f"rejected: {NO_SOURCE_DEVICE}" in outcomes
    page = client.get("/activity").text
    assert "2 refused" in page and NO_SOURCE_DEVICE in page


# -- the console ----------------------------------------------------------------------------------


def test_console_says_why_everyone_is_refused(harness: AppHarness) -> None:
    client = harness.login("admin")
    assert 'id="sources-warning"' not in client.get("/config").text
    with unit_of_work(harness.sessions) as session:
        get_site_config(session=session).restrict_sources = True
        assert "Every sender is refused" in everyone_refused(session=session)
    for path in ("/config", "/"):
        page = client.get(path).text
        assert 'id="sources-warning"' in page, path
        assert NO_SOURCE_DEVICE in page, path
    # A source device lifts the warning; a destination alone does not.
    with unit_of_work(harness.sessions) as session:
        add_device(
            session=session,
            name="pacs",
            ae_title="PACS",
            host=LOOPBACK,
            port=104,
            is_source=False,
            is_destination=True,
        )
    assert 'id="sources-warning"' in client.get("/").text
    with unit_of_work(harness.sessions) as session:
        add_device(
            session=session,
            name="ct",
            ae_title="CT1",
            host=LOOPBACK,
            port=104,
            is_source=True,
            is_destination=False,
        )
        assert everyone_refused(session=session) == ""
    assert 'id="sources-warning"' not in client.get("/").text
    assert 'id="sources-warning"' not in client.get("/config").text


def test_device_form_and_api_set_match_ae_only(harness: AppHarness) -> None:
    client = harness.login("admin")
    token = csrf_of(client.get("/devices").text)
    form = {
        "csrf_token": token,
        "name": "roaming",
        "ae_title": "ROAMING",
        "host": "192.0.2.10",
        "port": "104",
        "is_source": "true",
        "match_ae_only": "true",
    }
    assert client.post("/devices", data=form).status_code in (200, 303)
    page = client.get("/devices").text
    assert "yes, any address" in page
    assert 'name="match_ae_only"' in page
    devices = {d["name"]: d for d in client.get("/api/v1/devices").json()}
    assert devices["roaming"]["match_ae_only"] is True
    # Edited without the box: unchecked means off.
    edit = {k: v for k, v in form.items() if k != "match_ae_only"}
    device_id = devices["roaming"]["id"]
    assert client.post(f"/devices/{device_id}/edit", data=edit).status_code in (200, 303)
    assert client.get(f"/api/v1/devices/{device_id}").json()["match_ae_only"] is False
    # The REST API, both ways.
    created = client.post(
        "/api/v1/devices",
        json={
            "name": "ct",
            "ae_title": "CT1",
            "host": LOOPBACK,
            "port": 104,
            "is_source": True,
            "match_ae_only": True,
        },
        headers={"X-CSRF-Token": token},
    )
    assert created.status_code == 201, created.text
    assert created.json()["match_ae_only"] is True
    patched = client.patch(
        f"/api/v1/devices/{created.json()['id']}",
        json={"match_ae_only": False},
        headers={"X-CSRF-Token": token},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["match_ae_only"] is False
    assert client.get("/api/v1/devices").json()[0]["match_ae_only"] is False


def test_cli_device_add_match_ae_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETRAY_HOME", str(tmp_path))
    monkeypatch.delenv("PETRAY_DATABASE_URL", raising=False)
    common = ["--host", "192.0.2.10", "--port", "104", "--source"]
    assert (
        main(["device", "add", "roaming", "--ae-title", "ROAMING", *common, "--match-ae-only"]) == 0
    )
    assert main(["device", "add", "fixed", "--ae-title", "FIXED", *common]) == 0
    assert main(["device", "list", "--json"]) == 0
    assert '"match_ae_only": true' in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{tmp_path / 'petray.db'}")
    with unit_of_work(make_sessionmaker(engine)) as session:
        flags = {d.name: d.match_ae_only for d in list_devices(session=session)}
        assert flags == {"roaming": True, "fixed": False}
        assert session.get(Device, 1) is not None
    engine.dispose()


def test_default_is_host_bound(sqlite_sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sqlite_sessions) as session:
        device = add_device(
            session=session,
            name="ct",
            ae_title="CT1",
            host=LOOPBACK,
            port=104,
            is_source=True,
            is_destination=False,
        )
        assert device.match_ae_only is False
