"""DICOM over TLS (issue 10) against DCMTK in both directions, with certificates made here.

In: petray's Store SCP (petray.dicom.scp.StoreService with a server context) receives from DCMTK
``storescu +tls``, with and without client certificates required. Out: petray.dicom.scu sends and
echoes to DCMTK ``storescp +tls``, verifying it with the site CA and presenting a client
certificate when it demands one.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Device, Instance
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.dicom.scp import StoreService
from petray.dicom.scu import DicomNode, echo, send_instances
from petray.dicom.tls import TlsFiles, client_context, server_context, tls_handshake
from petray.errors import ConfigurationError, DeliveryRefused, TransientError
from petray.site.siteconfig import Listener, add_device
from petray.stages.delivery import with_device_tls
from tests.support.peers import LOOPBACK, free_port, run_storescu, start_storescp
from tests.support.tls_certs import Pki, make_pki

pytest_plugins = ["tests.support.peers"]
pytestmark = pytest.mark.peers

AE_TITLE = "PETRAY"
SLICES = 6
WAIT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def production_pydicom_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    return write_series(make_pet_series(slices=SLICES, rows=16, cols=16), tmp_path / "series")


@contextmanager
def tls_scp(
    root: Path, sessions: sessionmaker[Session], context: ssl.SSLContext
) -> Iterator[tuple[int, list[ReceivedInstance]]]:
    root.mkdir(parents=True, exist_ok=True)
    store = InstanceStore(root, sessions, min_free_bytes=0, fsync=False)
    received: list[ReceivedInstance] = []
    service = StoreService(store, sessions, on_instance=received.append)
    port = free_port()
    server = service.start(Listener(AE_TITLE, port, LOOPBACK), ssl_context=context)
    try:
        yield port, received
    finally:
        server.shutdown()


def _stored(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return len(session.scalars(select(Instance)).all())


def _tls_storescu(
    files: list[Path], port: int, pki: Pki, *, client_cert: bool = True
) -> tuple[int, str]:
    tls = (["+tls", str(pki.client.key), str(pki.client.cert)] if client_cert else ["+tla"]) + [
        "+cf",
        str(pki.ca),
    ]
    result = run_storescu(files, port=port, called_ae=AE_TITLE, extra_args=tls, timeout=60)
    return result.returncode, result.stdout + result.stderr


# --- in: DCMTK storescu +tls -> petray Store SCP ---------------------------------------------


def test_scp_receives_a_series_over_tls_from_dcmtk(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pki: Pki, series: list[Path]
) -> None:
    context = server_context(pki.server.cert, pki.server.key)
    with tls_scp(tmp_path / "in", sqlite_sessions, context) as (port, received):
        code, output = _tls_storescu(series, port, pki)
        assert code == 0, output
        assert len(received) == SLICES
        # The same port does not speak plain DICOM: a plain storescu gets no association.
        plain = run_storescu(series[:1], port=port, called_ae=AE_TITLE, timeout=30)
        assert plain.returncode != 0
    assert _stored(sqlite_sessions) == SLICES


def test_scp_requiring_client_certificates_refuses_a_sender_without_one(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pki: Pki, series: list[Path]
) -> None:
    context = server_context(pki.server.cert, pki.server.key, ca=pki.ca)
    with tls_scp(tmp_path / "in", sqlite_sessions, context) as (port, received):
        code, output = _tls_storescu(series, port, pki, client_cert=False)
        assert code != 0, output
        assert received == []
        code, output = _tls_storescu(series, port, pki, client_cert=True)
        assert code == 0, output
        assert len(received) == SLICES


def test_a_silent_connection_does_not_hold_up_tls_senders(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pki: Pki, series: list[Path]
) -> None:
    """pynetdicom would finish each handshake in its single accept thread (issue 8 probes)."""
    context = server_context(pki.server.cert, pki.server.key)
    with tls_scp(tmp_path / "in", sqlite_sessions, context) as (port, received):
        with socket.create_connection((LOOPBACK, port)):  # connects, never says hello
            started = time.monotonic()
            code, output = _tls_storescu(series, port, pki)
            elapsed = time.monotonic() - started
        assert code == 0, output
        assert len(received) == SLICES
        assert elapsed < 5.0, f"a silent peer held the TLS listener for {elapsed:.1f} s"


# --- out: petray SCU -> DCMTK storescp +tls --------------------------------------------------


def test_scu_sends_and_echoes_over_tls_to_dcmtk(
    tmp_path: Path, pki: Pki, series: list[Path]
) -> None:
    tls_args = ["+tls", str(pki.server.key), str(pki.server.cert), "-ic"]
    with start_storescp(tmp_path / "out", extra_args=tls_args) as peer:
        node = DicomNode(peer.aet, LOOPBACK, peer.port, tls=TlsFiles(ca=str(pki.ca)))
        assert echo(node, calling_ae=AE_TITLE, timeout_s=WAIT_S).ok
        report = send_instances(node, series, calling_ae=AE_TITLE, associations=2)
        assert report.sent == SLICES
        assert len(peer.wait_received(SLICES)) == SLICES
        # Without TLS the destination does not answer as DICOM.
        plain = echo(DicomNode(peer.aet, LOOPBACK, peer.port), calling_ae=AE_TITLE, timeout_s=3)
        assert not plain.ok


def test_scu_presents_its_client_certificate_when_the_destination_requires_one(
    tmp_path: Path, pki: Pki, series: list[Path]
) -> None:
    # storescp's default is --require-peer-cert, verified against the CA given with +cf.
    tls_args = ["+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca)]
    with start_storescp(tmp_path / "out", extra_args=tls_args) as peer:
        anonymous = DicomNode(peer.aet, LOOPBACK, peer.port, tls=TlsFiles(ca=str(pki.ca)))
        with pytest.raises(TransientError, match="TLS"):
            send_instances(anonymous, series, calling_ae=AE_TITLE, timeout_s=5)
        files = TlsFiles(ca=str(pki.ca), cert=str(pki.client.cert), key=str(pki.client.key))
        node = DicomNode(peer.aet, LOOPBACK, peer.port, tls=files)
        assert send_instances(node, series, calling_ae=AE_TITLE).sent == SLICES
        assert len(peer.wait_received(SLICES)) == SLICES


def test_scu_refuses_a_destination_its_ca_did_not_sign(
    tmp_path: Path, pki: Pki, series: list[Path]
) -> None:
    tls_args = ["+tls", str(pki.server.key), str(pki.server.cert), "-ic"]
    with start_storescp(tmp_path / "out", extra_args=tls_args) as peer:
        node = DicomNode(peer.aet, LOOPBACK, peer.port, tls=TlsFiles(ca=str(pki.other_ca)))
        result = echo(node, calling_ae=AE_TITLE, timeout_s=5)
        assert not result.ok and "TLS" in result.message
        with pytest.raises(TransientError):
            send_instances(node, series, calling_ae=AE_TITLE, timeout_s=5)
        assert peer.received() == []


def test_unusable_tls_files_are_a_permanent_refusal_naming_the_file(
    tmp_path: Path, series: list[Path]
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    node = DicomNode("PACS", LOOPBACK, free_port(), tls=TlsFiles(ca=str(missing)))
    with pytest.raises(DeliveryRefused, match=r"no-such-ca\.pem"):
        send_instances(node, series, calling_ae=AE_TITLE)
    result = echo(node, calling_ae=AE_TITLE)
    assert not result.ok and "no-such-ca.pem" in result.message


def test_tls_contexts_check_their_files(tmp_path: Path, pki: Pki) -> None:
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match=r"junk\.pem"):
        server_context(not_pem, pki.server.key)
    with pytest.raises(ConfigurationError, match="do not load"):
        server_context(pki.server.cert, pki.client.key)  # key of another certificate
    with pytest.raises(ConfigurationError, match="needs its key"):
        TlsFiles(cert=str(pki.client.cert))
    with pytest.raises(ConfigurationError, match=r"junk\.pem"):
        client_context(TlsFiles(ca=str(not_pem)))


def test_tls_handshake_reports_the_version(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pki: Pki
) -> None:
    context = server_context(pki.server.cert, pki.server.key)
    with tls_scp(tmp_path / "in", sqlite_sessions, context) as (port, _received):
        version = tls_handshake(LOOPBACK, port, client_context(TlsFiles(ca=str(pki.ca))))
    assert version in ("TLSv1.2", "TLSv1.3")


# --- devices: API, console form, CLI, and what the Store SCU reads at each attempt -----------


def test_api_device_with_tls_echoes_over_tls(tmp_path: Path, pki: Pki) -> None:
    from petray.site.users import create_api_token, get_user_by_name
    from tests.support.app import build_harness

    tls_args = ["+tls", str(pki.server.key), str(pki.server.cert), "-ic"]
    with start_storescp(tmp_path / "out", extra_args=tls_args) as peer:
        for h in build_harness(tmp_path):
            with unit_of_work(h.sessions) as session:
                admin = get_user_by_name("admin", session=session)
                assert admin is not None
                token = create_api_token(admin, session=session)[1]
            headers = {"Authorization": f"Bearer {token}"}
            body = {
                "name": "pacs-tls",
                "ae_title": peer.aet,
                "host": LOOPBACK,
                "port": peer.port,
                "is_destination": True,
                "tls": True,
                "tls_ca": str(pki.ca),
            }
            created = h.client.post("/api/v1/devices", headers=headers, json=body)
            assert created.status_code == 201, created.text
            assert created.json()["tls"] is True and created.json()["tls_ca"] == str(pki.ca)
            device_id = created.json()["id"]
            echoed = h.client.post(f"/api/v1/devices/{device_id}/echo", headers=headers)
            assert echoed.json()["ok"] is True, echoed.json()
            # The same device without TLS cannot speak to a TLS-only peer.
            h.client.patch(f"/api/v1/devices/{device_id}", headers=headers, json={"tls": False})
            echoed = h.client.post(f"/api/v1/devices/{device_id}/echo", headers=headers)
            assert echoed.json()["ok"] is False
            half = h.client.patch(
                f"/api/v1/devices/{device_id}", headers=headers, json={"tls_cert": "/x.pem"}
            )
            assert half.status_code in (409, 422), half.text
            bad = {**body, "name": "half", "tls_cert": str(pki.client.cert)}
            assert h.client.post("/api/v1/devices", headers=headers, json=bad).status_code == 422


def test_console_device_form_sets_tls(tmp_path: Path, pki: Pki) -> None:
    from tests.support.app import build_harness, csrf_of

    for h in build_harness(tmp_path):
        client = h.login("admin")
        form = {
            "csrf_token": csrf_of(client.get("/devices").text),
            "name": "pacs",
            "ae_title": "PACS",
            "host": LOOPBACK,
            "port": "2762",
            "is_destination": "true",
            "tls": "true",
            "tls_ca": str(pki.ca),
        }
        response = client.post("/devices", data=form)
        assert response.status_code in (200, 303), response.text
        page = client.get("/devices").text
        assert "TLS</span>" in page
        with h.sessions() as session:
            device = session.scalars(select(Device)).one()
            assert device.tls and device.tls_ca == str(pki.ca)


def test_store_scu_reads_tls_from_the_device_at_each_attempt(
    sqlite_sessions: sessionmaker[Session], pki: Pki
) -> None:
    from petray.stages.delivery import PendingDestination

    with unit_of_work(sqlite_sessions) as session:
        add_device(
            session=session,
            name="pacs",
            ae_title="PACS",
            host=LOOPBACK,
            port=2762,
            is_source=False,
            is_destination=True,
            tls=True,
            tls_ca=str(pki.ca),
        )
        add_device(
            session=session,
            name="plain",
            ae_title="PLAIN",
            host=LOOPBACK,
            port=104,
            is_source=False,
            is_destination=True,
        )
    pending = [
        PendingDestination(1, "pacs", DicomNode("PACS", LOOPBACK, 2762), frozenset()),
        # Renamed since dispatch: found by its address.
        PendingDestination(2, "old-name", DicomNode("PACS", LOOPBACK, 2762), frozenset()),
        PendingDestination(3, "plain", DicomNode("PLAIN", LOOPBACK, 104), frozenset()),
        PendingDestination(4, "gone", DicomNode("GONE", LOOPBACK, 1), frozenset()),
    ]
    with sqlite_sessions() as session:
        resolved = with_device_tls(pending, session=session)
    assert [p.node.tls for p in resolved] == [TlsFiles(ca=str(pki.ca))] * 2 + [None, None]
    assert [p.pk for p in resolved] == [1, 2, 3, 4]
