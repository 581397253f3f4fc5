"""STOW-RS client (issue 15): the multipart body, reading responses, what is retried.

The request body is read back with the standard library's MIME parser; 202 partial failures and
503s, which no real peer here produces on demand, come from a tiny HTTP server in this module.
Delivery to a real DICOMweb server (Orthanc) is in test_stow_orthanc.py.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pydicom
import pytest

from petray.db.models import Device
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.scu import DicomNode
from petray.dicom.stow import (
    StowEndpoint,
    StowInstance,
    batches,
    body_length,
    content_type,
    failure_error,
    http_error,
    multipart_body,
    new_boundary,
    parse_response,
    plan,
    reason_meaning,
    store_instances,
)
from petray.dicom.stow_device import validate_basic, validate_stow_url, validate_token
from petray.dicom.tls import TlsFiles, server_context
from petray.errors import ConfigurationError, DeliveryRefused, TransientError
from petray.stages.delivery import PendingDestination, with_stow_credentials
from tests.support.tls_certs import Pki, make_pki

PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
COERCION = 0xB000


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("series")
    return write_series(make_pet_series(slices=7, rows=16, cols=16, seed=15), directory)


def _uids(paths: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def _parts(body: bytes, header: str) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part, as a standard MIME parser reads them."""
    raw = f"Content-Type: {header}\r\n\r\n".encode() + body
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert message.get_content_type() == "multipart/related"
    assert message.get_param("type") == "application/dicom"
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_parts()]


def _response(
    referenced: list[str], failed: list[tuple[str, int]], warn: int | None = None
) -> bytes:
    """A Store Instances Response Module in DICOM JSON (PS3.18 10.5.3, F.2)."""

    def item(uid: str, **codes: int) -> dict[str, Any]:
        tags = {"FailureReason": "00081197", "WarningReason": "00081196"}
        out: dict[str, Any] = {
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.128"]},
            "00081155": {"vr": "UI", "Value": [uid]},
        }
        for name, code in codes.items():
            out[tags[name]] = {"vr": "US", "Value": [code]}
        return out

    warnings = {"WarningReason": warn} if warn is not None else {}
    return json.dumps(
        {
            "00081198": {"vr": "SQ", "Value": [item(u, FailureReason=c) for u, c in failed]},
            "00081199": {"vr": "SQ", "Value": [item(u, **warnings) for u in referenced]},
        }
    ).encode()


# -- body and batches ------------------------------------------------------------------------


def test_the_body_is_multipart_related_with_each_file_unchanged(series: list[Path]) -> None:
    items, skipped = plan(series[:3], ())
    boundary = new_boundary()
    body = b"".join(multipart_body(items, boundary))
    assert len(body) == body_length(items, boundary)
    parts = _parts(body, content_type(boundary))
    assert [kind for kind, _ in parts] == ["application/dicom"] * 3
    assert [payload for _, payload in parts] == [p.read_bytes() for p in series[:3]]
    assert skipped == 0
    assert new_boundary() != boundary


def test_planning_skips_acknowledged_and_repeated_instances(series: list[Path]) -> None:
    uids = _uids(series)
    items, skipped = plan([*series, series[0]], {uids[1], uids[2]})
    assert [i.sop_instance_uid for i in items] == [uids[0], *uids[3:]]
    assert skipped == 3  # the two acknowledged and the repeat
    assert all(i.size == i.path.stat().st_size for i in items)


def test_batches_are_bounded_by_count_and_bytes() -> None:
    items = [
        StowInstance(Path(f"{n}.dcm"), f"1.2.{n}", size)
        for n, size in enumerate([40, 40, 40, 150, 10, 10, 10])
    ]
    by_count = batches(items, max_instances=3, max_bytes=10_000)
    assert [len(b) for b in by_count] == [3, 3, 1]
    by_bytes = batches(items, max_instances=50, max_bytes=100)
    # An instance larger than the bound travels alone rather than not at all.
    assert [[i.size for i in b] for b in by_bytes] == [[40, 40], [40], [150], [10, 10, 10]]
    assert [i for b in by_bytes for i in b] == items
    with pytest.raises(ValueError, match="positive"):
        batches(items, max_instances=0)


# -- responses -------------------------------------------------------------------------------


def test_200_stores_everything_even_without_a_body() -> None:
    outcome = parse_response(200, b"", ["1.1", "1.2"])
    assert outcome.stored == ("1.1", "1.2") and outcome.failed == ()


def test_200_keeps_warnings_of_stored_instances() -> None:
    outcome = parse_response(200, _response(["1.1", "1.2"], [], warn=COERCION), ["1.1", "1.2"])
    assert outcome.stored == ("1.1", "1.2")
    assert outcome.warnings == (("1.1", COERCION), ("1.2", COERCION))
    assert "Coercion" in reason_meaning(COERCION)


def test_202_splits_stored_failed_and_unmentioned_instances() -> None:
    sent = ["1.1", "1.2", "1.3", "1.4"]
    outcome = parse_response(202, _response(["1.1", "1.3"], [("1.2", PROCESSING_FAILURE)]), sent)
    assert outcome.stored == ("1.1", "1.3")
    # 1.4 was not acknowledged: it counts as failed and is sent again next time.
    assert outcome.failed == (("1.2", PROCESSING_FAILURE), ("1.4", None))


def test_409_and_unreadable_bodies_store_nothing() -> None:
    assert parse_response(409, _response([], [("1.1", PROCESSING_FAILURE)]), ["1.1"]).stored == ()
    assert parse_response(202, b"<html>busy</html>", ["1.1"]).failed == (("1.1", None),)
    # A JSON array around the one dataset (seen from some servers) reads the same.
    wrapped = b"[" + _response(["1.1"], []) + b"]"
    assert parse_response(202, wrapped, ["1.1", "1.2"]).stored == ("1.1",)


def test_failures_are_permanent_unless_every_reason_is_a_lack_of_resources() -> None:
    endpoint = StowEndpoint("http://127.0.0.1:9/dicom-web")
    refused = failure_error(
        endpoint, [("1.1", OUT_OF_RESOURCES), ("1.2", PROCESSING_FAILURE)], of=2
    )
    assert isinstance(refused, DeliveryRefused)
    assert "did not store 2 of 2 instances" in str(refused)
    assert "Processing Failure (0x0110)" in str(refused)
    busy = failure_error(endpoint, [("1.1", 0xA701), ("1.2", 0x0213)], of=5)
    assert isinstance(busy, TransientError)
    assert "Out of Resources (0xA701)" in str(busy)
    many = failure_error(endpoint, [(f"1.{n}", None) for n in range(5)], of=5)
    assert isinstance(many, DeliveryRefused) and "(+2 more)" in str(many)


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (503, TransientError, "503"),
        (500, TransientError, "500"),
        (429, TransientError, "429"),
        (408, TransientError, "408"),
        (401, DeliveryRefused, "token or user:password"),
        (403, DeliveryRefused, "token or user:password"),
        (302, DeliveryRefused, "final address"),
        (404, DeliveryRefused, "no STOW-RS service"),
        (413, DeliveryRefused, "smaller requests"),
        (415, DeliveryRefused, "415"),
    ],
)
def test_http_statuses_are_classified(status: int, kind: type[Exception], words: str) -> None:
    import httpx

    error = http_error(StowEndpoint("http://127.0.0.1:9/dw"), httpx.Response(status))
    assert isinstance(error, kind)
    assert words in str(error)


def test_200_202_and_409_are_read_from_the_body() -> None:
    import httpx

    for status in (200, 202, 409):
        assert http_error(StowEndpoint("http://127.0.0.1:9/dw"), httpx.Response(status)) is None


# -- configuration ---------------------------------------------------------------------------


def test_urls_are_checked_when_configured() -> None:
    assert validate_stow_url(" https://pacs.example.org:8443/dicom-web/ ") == (
        "https://pacs.example.org:8443/dicom-web"
    )
    for bad, words in [
        ("ftp://pacs/dicom-web", "http:// or https://"),
        ("pacs.example.org/dicom-web", "http:// or https://"),
        ("http://alice:secret@pacs/dicom-web", "user:password"),
        ("http://pacs/dicom-web?x=1", "query"),
        ("http://pacs/dicom-web/studies", "appends /studies"),
        ("http://pacs:99999/dicom-web", "port"),
        ("http://pacs/" + "a" * 300, "longer than"),
    ]:
        with pytest.raises(ValueError, match=words):
            validate_stow_url(bad)


def test_credentials_are_checked_and_never_shown() -> None:
    assert validate_basic("alice:pa ss") == "alice:pa ss"
    for bad in ("alice", ":pw", "alice:", "al ice:pw"):
        with pytest.raises(ValueError, match="user"):
            validate_basic(bad)
    with pytest.raises(ValueError, match="printable"):
        validate_token("abc\r\nX-Injected: 1")
    endpoint = StowEndpoint("http://127.0.0.1:9/dw", token="s3cret-token")
    assert "s3cret" not in repr(endpoint) and "s3cret" not in str(endpoint)
    basic = StowEndpoint("http://127.0.0.1:9/dw", basic="alice:pw-s3cret")
    assert "pw-s3cret" not in repr(basic)
    with pytest.raises(ConfigurationError, match="not both"):
        StowEndpoint("http://127.0.0.1:9/dw", token="t", basic="a:b")


# -- against a scripted HTTP server ----------------------------------------------------------

Answer = Callable[[list[str]], tuple[int, bytes]]


@contextmanager
def scripted_server(
    answer: Answer, *, tls: ssl.SSLContext | None = None
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on loopback that reads each STOW-RS request and answers ``answer(uids)``.

    With ``tls``, HTTPS: Debian's Orthanc 1.10.1 dies on its first HTTPS request, so petray's
    TLS client is checked against this server instead.
    """
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            parts = _parts(body, self.headers["Content-Type"])
            uids = [str(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID) for _, p in parts]
            seen.append({"path": self.path, "uids": uids, "headers": dict(self.headers)})
            status, content = answer(uids)
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_batches_are_posted_with_auth_and_every_acknowledged_instance_recorded(
    series: list[Path],
) -> None:
    with scripted_server(lambda uids: (200, _response(uids, []))) as (url, seen):
        recorded: list[str] = []
        report = store_instances(
            StowEndpoint(url, token="tok-123"),
            series,
            skip_sop_uids={_uids(series)[0]},
            on_sent=recorded.append,
            max_instances=4,
        )
    assert recorded == _uids(series)[1:]
    assert (report.sent, report.skipped, report.requests) == (6, 1, 2)
    assert [len(r["uids"]) for r in seen] == [4, 2]
    headers = seen[0]["headers"]
    assert seen[0]["path"] == "/dicom-web/studies"
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Accept"] == "application/dicom+json"
    assert "chunked" not in headers.get("Transfer-Encoding", "")


def test_partial_failure_records_the_stored_and_refuses_with_the_reason(
    series: list[Path],
) -> None:
    def answer(uids: list[str]) -> tuple[int, bytes]:
        return 202, _response(uids[1:], [(uids[0], PROCESSING_FAILURE)])

    recorded: list[str] = []
    with (
        scripted_server(answer) as (url, seen),
        pytest.raises(DeliveryRefused, match=r"did not store 1 of 3.*Processing Failure"),
    ):
        store_instances(
            StowEndpoint(url, basic="alice:pw"),
            series,
            on_sent=recorded.append,
            max_instances=3,
        )
    # Stopped after the batch with the refusal, as C-STORE stops at a refused instance.
    assert len(seen) == 1
    assert recorded == _uids(series)[1:3]
    assert seen[0]["headers"]["Authorization"].startswith("Basic ")


def test_an_unavailable_destination_is_transient_and_nothing_is_recorded(
    series: list[Path],
) -> None:
    recorded: list[str] = []
    with (
        scripted_server(lambda uids: (503, b"")) as (url, _),
        pytest.raises(TransientError, match="503"),
    ):
        store_instances(StowEndpoint(url), series, on_sent=recorded.append)
    assert recorded == []


def test_nothing_listening_is_transient(series: list[Path]) -> None:
    from petray.demo.orthanc import free_port

    with pytest.raises(TransientError, match="cannot connect"):
        store_instances(StowEndpoint(f"http://127.0.0.1:{free_port()}/dw"), series, timeout_s=2)


# -- TLS (certificates from tests/support/tls_certs.py, as the DICOM TLS tests make them) ---


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _stored(uids: list[str]) -> tuple[int, bytes]:
    return 200, _response(uids, [])


def _device_endpoint(url: str, **tls: str) -> StowEndpoint:
    """The endpoint as the StoreSCU stage resolves it from the device row (its CA, its cert)."""
    device = Device(name="vna", stow_url=url, stow_token="", stow_basic="", **tls)
    pending = PendingDestination(1, "vna", DicomNode("", url, 0), frozenset(), StowEndpoint(url))
    with patch("petray.stages.delivery.list_devices", return_value=[device]):
        [resolved] = with_stow_credentials([pending], session=None)  # type: ignore[arg-type]
    assert resolved.stow is not None
    return resolved.stow


def test_https_verified_with_the_devices_ca(series: list[Path], pki: Pki) -> None:
    context = server_context(pki.server.cert, pki.server.key)
    with scripted_server(_stored, tls=context) as (url, seen):
        endpoint = _device_endpoint(url, tls_ca=str(pki.ca))
        assert store_instances(endpoint, series[:2]).sent == 2
    assert len(seen) == 1


def test_https_signed_by_another_ca_is_refused_for_good(series: list[Path], pki: Pki) -> None:
    context = server_context(pki.server.cert, pki.server.key)
    with (
        scripted_server(_stored, tls=context) as (url, seen),
        pytest.raises(DeliveryRefused, match="TLS certificate not trusted"),
    ):
        store_instances(_device_endpoint(url, tls_ca=str(pki.other_ca)), series[:2])
    assert seen == []


def test_https_presents_the_client_certificate_when_asked(series: list[Path], pki: Pki) -> None:
    context = server_context(pki.server.cert, pki.server.key, ca=pki.ca)
    with scripted_server(_stored, tls=context) as (url, _):
        endpoint = _device_endpoint(
            url, tls_ca=str(pki.ca), tls_cert=str(pki.client.cert), tls_key=str(pki.client.key)
        )
        assert store_instances(endpoint, series[:2]).sent == 2


def test_unusable_ca_file_is_a_permanent_refusal_naming_it(
    series: list[Path], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    endpoint = StowEndpoint("https://127.0.0.1:9/dw", tls=TlsFiles(ca=str(missing)))
    with pytest.raises(DeliveryRefused, match=r"no-such-ca\.pem"):
        store_instances(endpoint, series[:1])
