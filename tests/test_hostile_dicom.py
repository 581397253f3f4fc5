"""Hostile DICOM input (issue 9) and port probes (issue 8 item 8), sent as an attacker would.

Each case runs against a real listening StoreService (no Ray) over real associations
(pynetdicom or DCMTK), checks the exact refusal, then proves the service is still up and that
nothing accepted before is lost: a good series sent before and one sent after are both stored.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom.config
import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PositronEmissionTomographyImageStorage,
    Verification,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, Instance
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.ingest import InstanceStore
from petray.dicom.scp import (
    PREAMBLE_AND_PREFIX,
    IngestLimits,
    StoreService,
    encode_file_meta,
    source_refusal,
)
from petray.dicom.status import StoreStatus
from petray.site.siteconfig import Listener, add_device, get_site_config
from tests.support.peers import LOOPBACK, free_port, run_echoscu, run_storescu

pytestmark = pytest.mark.peers

AE_TITLE = "PETRAY"
GOOD_SLICES = 3
STORESCU_SUCCESS = "Received Store Response (Success)"
POLL_S = 0.05
# A refusal must be quick: the unbounded inflate it replaces took 63-97 s (issue 9).
FAST_REFUSAL_S = 5.0


@dataclass
class Scp:
    service: StoreService
    sessions: sessionmaker[Session]
    port: int
    root: Path
    limits: IngestLimits

    def uids(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))

    def logs(self) -> list[AssociationLog]:
        with self.sessions() as session:
            return list(session.scalars(select(AssociationLog).order_by(AssociationLog.id)))


@contextmanager
def running(root: Path, sessions: sessionmaker[Session], limits: IngestLimits) -> Iterator[Scp]:
    root.mkdir(parents=True, exist_ok=True)
    store = InstanceStore(root, sessions, min_free_bytes=0, fsync=False)
    service = StoreService(store, sessions, on_instance=lambda _: None, limits=limits)
    server = service.start(Listener(ae_title=AE_TITLE, port=free_port(), bind=LOOPBACK))
    try:
        yield Scp(service, sessions, server.server_address[1], root, limits)
    finally:
        server.shutdown()


@pytest.fixture(autouse=True)
def production_pydicom_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
    # Files are sent as their bytes are, never decoded and re-encoded by pynetdicom.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.fixture
def scp(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> Iterator[Scp]:
    with running(tmp_path / "instances", sqlite_sessions, IngestLimits()) as service:
        yield service


# -- building hostile files ---------------------------------------------------------------------


def encode(ds: Dataset, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax.is_implicit_VR
    buffer.is_little_endian = syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def deflate(chunks: Sequence[bytes] | Iterator[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.flush()


def raw_file(
    path: Path,
    dataset: bytes,
    *,
    sop_class: str = PositronEmissionTomographyImageStorage,
    sop_instance: str,
    syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """A file whose meta says what the C-STORE request will say, and ``dataset`` as it is."""
    path.write_bytes(
        PREAMBLE_AND_PREFIX + encode_file_meta(sop_class, sop_instance, syntax) + dataset
    )
    return path


def pet(**overrides: object) -> Dataset:
    (ds,) = make_pet_series(**{"slices": 1, "rows": 16, "cols": 16, "seed": 7, **overrides})
    return ds


def with_pixel_length(ds: Dataset, length: int) -> bytes:
    """The dataset encoded with PixelData of ``length`` bytes, whatever Rows/Columns say."""
    ds = ds.copy()
    ds.PixelData = bytes(length)
    return encode(ds)


def send_files(
    port: int,
    paths: Sequence[Path],
    *,
    sop_class: str = PositronEmissionTomographyImageStorage,
    syntax: str = ExplicitVRLittleEndian,
    calling_ae: str = "ATTACKER",
) -> list[Dataset | None]:
    """Statuses of C-STOREs over one pynetdicom association; None where it was aborted."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = [build_context(sop_class, syntax)]
    if sop_class != PositronEmissionTomographyImageStorage:
        contexts.append(build_context(PositronEmissionTomographyImageStorage, syntax))
    assoc = ae.associate(LOOPBACK, port, contexts=contexts, ae_title=AE_TITLE)
    assert assoc.is_established
    statuses: list[Dataset | None] = []
    try:
        for path in paths:
            status = assoc.send_c_store(path) if assoc.is_established else None  # type: ignore[attr-defined]
            statuses.append(status if status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


def good_series(directory: Path, seed: int) -> list[Path]:
    return write_series(make_pet_series(slices=GOOD_SLICES, rows=16, cols=16, seed=seed), directory)


def uids_of(paths: Sequence[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def storescu_ok(port: int, paths: Sequence[Path], calling_ae: str = "GOODSCU") -> None:
    result = run_storescu(paths, port=port, called_ae=AE_TITLE, calling_ae=calling_ae)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output


def survives(scp: Scp, tmp_path: Path, attack: Callable[[], None]) -> None:
    """A good series before and after ``attack``: both stored, nothing else stored."""
    before = good_series(tmp_path / "before", seed=101)
    after = good_series(tmp_path / "after", seed=102)
    storescu_ok(scp.port, before)
    attack()
    storescu_ok(scp.port, after)
    assert scp.uids() == uids_of(before) | uids_of(after)
    assert len([p for p in scp.root.rglob("*.dcm")]) == 2 * GOOD_SLICES
    assert not list(scp.root.rglob("*.part")), "a refused instance left a partial file"


def refused_with(status: Dataset | None, code: StoreStatus, *phrases: str) -> None:
    assert status is not None, "the association was aborted instead of answered"
    assert status.Status == code, (hex(status.Status), status.get("ErrorComment"))
    comment = str(status.get("ErrorComment", ""))
    for phrase in phrases:
        assert phrase in comment, comment


# -- size: deflate bombs, lying Rows/Columns, oversized datasets ---------------------------------


def test_deflate_bomb_is_refused_fast_without_inflating_it(scp: Scp, tmp_path: Path) -> None:
    ds = pet()
    header = encode(ds)[: -len(ds.PixelData) - 12]  # everything before the PixelData element
    # 256 MiB of zeros after a valid header: ~250 KB on the wire, four times the default cap.
    bomb_size = 256 * 2**20
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (bomb_size).to_bytes(4, "little")
    chunks = (bytes(2**20) for _ in range(bomb_size // 2**20))
    wire = deflate(iter([header, pixel_header, *chunks]))
    assert len(wire) < 2**20
    bomb = raw_file(
        tmp_path / "bomb.dcm",
        wire,
        sop_instance=str(ds.SOPInstanceUID),
        syntax=DeflatedExplicitVRLittleEndian,
    )

    def attack() -> None:
        started = time.monotonic()
        (status,) = send_files(scp.port, [bomb], syntax=DeflatedExplicitVRLittleEndian)
        assert time.monotonic() - started < FAST_REFUSAL_S
        refused_with(status, StoreStatus.CANNOT_UNDERSTAND, "inflates beyond the limit of 64 MiB")

    survives(scp, tmp_path, attack)
    assert scp.service.counters.refused == 1


def test_deflated_dataset_within_the_cap_but_lying_about_its_size(scp: Scp, tmp_path: Path) -> None:
    ds = pet()
    bad = raw_file(
        tmp_path / "deflated-short.dcm",
        deflate([with_pixel_length(ds, 100)]),
        sop_instance=str(ds.SOPInstanceUID),
        syntax=DeflatedExplicitVRLittleEndian,
    )

    def attack() -> None:
        (status,) = send_files(scp.port, [bad], syntax=DeflatedExplicitVRLittleEndian)
        refused_with(
            status, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "PixelData is 100 bytes"
        )

    survives(scp, tmp_path, attack)


@pytest.mark.parametrize(
    ("case", "rows", "cols", "length", "phrase"),
    [
        ("65535-square-4.6KB", 65535, 65535, 4600, "Rows (above the limit of 4096)"),
        ("4000-square-4.6KB", 4000, 4000, 4600, "PixelData is 4600 bytes"),
        ("half-length", 16, 16, 256, "PixelData is 256 bytes"),
        ("one-byte-short", 16, 16, 512, "PixelData truncated: 511 of 512"),
        ("one-row-long", 16, 16, 544, "PixelData is 544 bytes"),
        ("empty", 16, 16, 0, "PixelData is 0 bytes"),
    ],
)
def test_declared_size_must_match_the_pixel_data(
    scp: Scp, tmp_path: Path, case: str, rows: int, cols: int, length: int, phrase: str
) -> None:
    ds = pet()
    ds.Rows, ds.Columns = rows, cols
    encoded = with_pixel_length(ds, length)
    if case == "one-byte-short":
        encoded = with_pixel_length(ds, 512)[:-1]  # the element says 512, 511 arrive
    bad = raw_file(tmp_path / f"{case}.dcm", encoded, sop_instance=str(ds.SOPInstanceUID))

    def attack() -> None:
        (status,) = send_files(scp.port, [bad])
        assert status is not None and status.Status != StoreStatus.SUCCESS
        assert phrase in str(status.ErrorComment), status.ErrorComment

    survives(scp, tmp_path, attack)


def test_encapsulated_image_too_large_to_decode_is_refused(scp: Scp, tmp_path: Path) -> None:
    # RLE of a tiny image whose header claims 4096 x 4096 x 32 bits x 100 frames (6.4 GB decoded).
    (ds,) = make_pet_series(slices=1, rows=16, cols=16, seed=9, transfer_syntax=RLELossless)
    ds.Rows = ds.Columns = 4096
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.NumberOfFrames = 100
    bad = raw_file(
        tmp_path / "rle.dcm",
        encode(ds, RLELossless),
        sop_instance=str(ds.SOPInstanceUID),
        syntax=RLELossless,
    )

    def attack() -> None:
        (status,) = send_files(scp.port, [bad], syntax=RLELossless)
        refused_with(status, StoreStatus.CANNOT_UNDERSTAND, "exceed 64 MiB")

    survives(scp, tmp_path, attack)


def test_endless_dataset_aborts_the_association_not_the_service(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    limits = IngestLimits(max_instance_bytes=2**20)
    with running(tmp_path / "instances", sqlite_sessions, limits) as small:
        ds = pet()
        big = raw_file(
            tmp_path / "big.dcm", with_pixel_length(ds, 3 * 2**20), sop_instance=ds.SOPInstanceUID
        )

        def attack() -> None:
            (status,) = send_files(small.port, [big])
            assert status is None  # aborted while receiving, before it was all in memory

        survives(small, tmp_path, attack)


# -- identity: SOP class and instance must be what the request says ------------------------------


@pytest.mark.parametrize(
    ("case", "context", "dataset_class", "affected_instance", "phrase"),
    [
        ("pet-under-ct-context", CTImageStorage, None, None, "differs from the negotiated"),
        ("ct-dataset-as-pet", None, CTImageStorage, None, "differs from the negotiated"),
        ("other-instance-uid", None, None, "1.2.3.999", "SOP Instance UID differs"),
    ],
)
def test_dataset_must_match_its_request(
    scp: Scp,
    tmp_path: Path,
    case: str,
    context: str | None,
    dataset_class: str | None,
    affected_instance: str | None,
    phrase: str,
) -> None:
    ds = pet()
    if dataset_class:
        ds.SOPClassUID = dataset_class
    request_class = context or PositronEmissionTomographyImageStorage
    bad = raw_file(
        tmp_path / f"{case}.dcm",
        encode(ds),
        sop_class=request_class,
        sop_instance=affected_instance or str(ds.SOPInstanceUID),
    )

    def attack() -> None:
        (status,) = send_files(scp.port, [bad], sop_class=request_class)
        refused_with(status, StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, phrase)

    survives(scp, tmp_path, attack)
    assert scp.service.counters.refused == 1


# -- who may associate ---------------------------------------------------------------------------


def echo_from(
    port: int, *, calling_ae: str, called_ae: str = AE_TITLE, bind: str = LOOPBACK
) -> bool:
    """A C-ECHO association from ``bind`` (another loopback address stands for another host)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title=called_ae, bind_address=(bind, 0))
    if not assoc.is_established:
        return False
    ok = bool(assoc.send_c_echo())
    assoc.release()
    return ok


def restrict_sources(scp: Scp, *devices: tuple[str, str]) -> None:
    with unit_of_work(scp.sessions) as session:
        get_site_config(session=session).restrict_sources = True
        for number, (ae_title, host) in enumerate(devices):
            add_device(
                session=session,
                name=f"source{number}",
                ae_title=ae_title,
                host=host,
                port=104,
                is_source=True,
                is_destination=False,
            )


def rejection_outcomes(scp: Scp) -> list[str]:
    return [log.outcome for log in scp.logs() if log.outcome.startswith("rejected")]


def test_whitelist_without_sources_refuses_everyone(scp: Scp, tmp_path: Path) -> None:
    restrict_sources(scp)
    refused = run_echoscu(port=scp.port, called_ae=AE_TITLE, calling_ae="ANYONE")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    paths = good_series(tmp_path / "sent", seed=5)
    assert run_storescu(paths, port=scp.port, called_ae=AE_TITLE).returncode != 0
    assert scp.uids() == set()
    assert (
        rejection_outcomes(scp)
        == ["rejected: only configured sources may store, and no source device is configured"] * 2
    )
    assert scp.service.counters.rejected == 2


@pytest.mark.parametrize("host", [LOOPBACK, "localhost"], ids=["address", "host-name"])
def test_known_ae_title_from_another_host_is_rejected(scp: Scp, tmp_path: Path, host: str) -> None:
    restrict_sources(scp, ("SCANNER", host))
    assert not echo_from(scp.port, calling_ae="SCANNER", bind="127.0.0.2")
    assert rejection_outcomes(scp) == [
        "rejected: calling AE title 'SCANNER' called from 127.0.0.2, not from its device's host"
    ]
    assert not echo_from(scp.port, calling_ae="STRANGER")
    # The device from its own host still stores.
    assert echo_from(scp.port, calling_ae="SCANNER")
    paths = good_series(tmp_path / "sent", seed=6)
    storescu_ok(scp.port, paths, calling_ae="SCANNER")
    assert scp.uids() == uids_of(paths)


def test_wrong_called_ae_title_is_rejected(scp: Scp, tmp_path: Path) -> None:
    def attack() -> None:
        assert not echo_from(scp.port, calling_ae="ANYONE", called_ae="NOTPETRAY")
        result = run_echoscu(port=scp.port, called_ae="ORTHANC", calling_ae="ANYONE")
        assert result.returncode != 0
        assert "Called AE Title Not Recognized" in result.stdout + result.stderr

    survives(scp, tmp_path, attack)
    assert rejection_outcomes(scp) == [
        "rejected: called AE title 'NOTPETRAY' is not 'PETRAY'",
        "rejected: called AE title 'ORTHANC' is not 'PETRAY'",
    ]


def test_source_refusal_rules() -> None:
    def resolve(host: str) -> frozenset[str]:
        return {"pacs.local": frozenset({"10.0.0.5"})}.get(host, frozenset({host}))

    sources = [("PACS", "pacs.local"), ("CT1", "10.0.0.7")]
    assert source_refusal("PACS", "10.0.0.5", sources, resolve=resolve) == ""
    assert source_refusal("PACS", "::ffff:10.0.0.5", sources, resolve=resolve) == ""
    assert "not from its device's host" in source_refusal(
        "PACS", "10.0.0.7", sources, resolve=resolve
    )
    assert "not a configured source" in source_refusal("CT2", "10.0.0.7", sources, resolve=resolve)
    assert "no source device" in source_refusal("PACS", "10.0.0.5", [], resolve=resolve)
    # An unresolvable host name matches nobody: fail closed.
    assert source_refusal(
        "PACS", "10.0.0.5", [("PACS", "gone.invalid")], resolve=lambda h: frozenset()
    )


# -- port probes must not hold association slots (issue 8 item 8) --------------------------------

PROBES = 40


def send_within(port: int, paths: Sequence[Path], deadline_s: float) -> float:
    """Seconds until a real storescu send succeeds, retrying until ``deadline_s``."""
    started = time.monotonic()
    while True:
        result = run_storescu(paths, port=port, called_ae=AE_TITLE, calling_ae="SCANNER")
        elapsed = time.monotonic() - started
        if result.returncode == 0:
            return elapsed
        assert elapsed < deadline_s, result.stdout + result.stderr
        time.sleep(POLL_S)


def test_bare_connects_do_not_lock_senders_out(scp: Scp, tmp_path: Path) -> None:
    for _ in range(PROBES):
        with socket.create_connection((LOOPBACK, scp.port), timeout=5):
            pass  # connect and close, as a port scanner does
    paths = good_series(tmp_path / "sent", seed=8)
    # Before the fix each probe held a slot for pynetdicom's 30 s ACSE timeout.
    assert send_within(scp.port, paths, deadline_s=3.0) < 3.0
    assert scp.uids() == uids_of(paths)


def test_silent_connections_are_dropped_after_the_acse_timeout(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    limits = IngestLimits(acse_timeout_s=2.0)
    with running(tmp_path / "instances", sqlite_sessions, limits) as quick:
        probes = [
            socket.create_connection((LOOPBACK, quick.port), timeout=5) for _ in range(PROBES)
        ]
        try:
            paths = good_series(tmp_path / "sent", seed=9)
            elapsed = send_within(quick.port, paths, deadline_s=limits.acse_timeout_s + 5.0)
            # The server closed every silent connection: each reads end-of-stream.
            for probe in probes:
                probe.settimeout(5)
                assert probe.recv(1) == b""
        finally:
            for probe in probes:
                probe.close()
        assert elapsed < limits.acse_timeout_s + 5.0
        assert quick.uids() == uids_of(paths)


# -- malformed datasets: each refused with its reason (issue 9 corpus) ----------------------------


def only(ds: Dataset, keyword: str, syntax: UID = ExplicitVRLittleEndian) -> bytes:
    """The encoded bytes of one element of ``ds``."""
    single = Dataset()
    setattr(single, keyword, getattr(ds, keyword))
    return encode(single, syntax)


def explicit_element(group: int, element: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element, written by hand (any VR, any value)."""
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN"):
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def swapped(keyword: str, replacement: bytes, **overrides: object) -> tuple[bytes, UID]:
    """A good PET dataset whose element ``keyword`` is replaced by ``replacement`` bytes."""
    ds = pet(**overrides)
    data = encode(ds)
    old = only(ds, keyword)
    assert data.count(old) == 1
    return data.replace(old, replacement), ExplicitVRLittleEndian


def changed(syntax: UID = ExplicitVRLittleEndian, **values: object) -> tuple[bytes, UID]:
    """A good PET dataset with some attributes set (None deletes one)."""
    ds = pet()
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return encode(ds, syntax), syntax


def nested_sequences(depth: int, *, without: str = "") -> tuple[bytes, UID]:
    """A private sequence nested ``depth`` deep before the pixel data (undefined lengths)."""
    item = b""
    for _ in range(depth):
        inner = explicit_element(0x0009, 0x1010, "SQ", b"")[:-4] + b"\xff\xff\xff\xff"
        item = (
            inner + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        )
        item += b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    ds = pet()
    if without:
        delattr(ds, without)
    data = encode(ds)
    at = data.index(b"\xe0\x7f\x10\x00")  # PixelData's tag
    creator = explicit_element(0x0009, 0x0010, "LO", b"FUZZ")
    return data[:at] + creator + item + data[at:], ExplicitVRLittleEndian


def truncated(fraction: float) -> tuple[bytes, UID]:
    data = encode(pet())
    header = len(data) - len(pet().PixelData) - 12
    return data[: int(header * fraction)], ExplicitVRLittleEndian


CANNOT = StoreStatus.CANNOT_UNDERSTAND
MISMATCH = StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
MALFORMED: dict[str, tuple[Callable[[], tuple[bytes, UID]], StoreStatus, str]] = {
    "truncated-mid-header": (lambda: truncated(0.5), MISMATCH, "missing mandatory attributes"),
    "truncated-in-element-header": (
        lambda: (encode(pet())[: -(len(pet().PixelData) + 6)], ExplicitVRLittleEndian),
        CANNOT,
        "cannot parse dataset",
    ),
    "wrong-vr-rows-as-text": (
        lambda: swapped("Rows", explicit_element(0x0028, 0x0010, "DS", b"abc ")),
        MISMATCH,
        "invalid attributes: Rows",
    ),
    "wrong-vr-spacing-as-uid": (
        lambda: swapped("PixelSpacing", explicit_element(0x0028, 0x0030, "UI", b"1.2.3\x00")),
        MISMATCH,
        "PixelSpacing",
    ),
    "unknown-vr-in-character-set": (
        lambda: swapped("SpecificCharacterSet", explicit_element(0x0008, 0x0005, "BS", b"XX")),
        CANNOT,
        "cannot parse dataset",
    ),
    "huge-vr-length": (
        lambda: swapped(
            "SeriesDescription",
            explicit_element(0x0008, 0x103E, "UT", b"")[:-4] + b"\xf0\xff\xff\xff",
        ),
        # Read as the rest of the dataset: everything after it is missing.
        MISMATCH,
        "missing mandatory attributes: StudyInstanceUID",
    ),
    "sequences-nested-200-deep": (
        lambda: nested_sequences(200),
        CANNOT,
        "cannot parse dataset: sequences nested too deep",
    ),
    "sequences-nested-20-deep-but-no-pixel-check": (
        # Legal nesting is accepted up to the header: this one is refused for its missing UID.
        lambda: nested_sequences(20, without="SeriesInstanceUID"),
        MISMATCH,
        "missing mandatory attributes: SeriesInstanceUID",
    ),
    "non-numeric-slice-thickness": (
        lambda: swapped("SliceThickness", explicit_element(0x0018, 0x0050, "DS", b"abc ")),
        MISMATCH,
        "SliceThickness (not a number)",
    ),
    "non-numeric-rescale-slope": (
        lambda: swapped("RescaleSlope", explicit_element(0x0028, 0x1053, "DS", b"x1")),
        MISMATCH,
        "RescaleSlope (not a number)",
    ),
    "nan-rescale-slope": (
        lambda: changed(RescaleSlope="NaN"),
        MISMATCH,
        "RescaleSlope (not a finite number)",
    ),
    "negative-rescale-slope": (
        lambda: changed(RescaleSlope="-0.5"),
        MISMATCH,
        "RescaleSlope (must be positive)",
    ),
    "zero-rescale-slope": (
        lambda: changed(RescaleSlope="0"),
        MISMATCH,
        "RescaleSlope (must be positive)",
    ),
    "zero-spacing": (
        lambda: changed(PixelSpacing=["0", "0"]),
        MISMATCH,
        "PixelSpacing (spacing must be positive)",
    ),
    "negative-spacing": (
        lambda: changed(PixelSpacing=["-2", "2"]),
        MISMATCH,
        "PixelSpacing (spacing must be positive)",
    ),
    "no-study-uid": (
        lambda: changed(StudyInstanceUID=None),
        MISMATCH,
        "missing mandatory attributes: StudyInstanceUID",
    ),
    "no-modality": (
        lambda: changed(Modality=None),
        MISMATCH,
        "missing mandatory attributes: Modality",
    ),
    "malformed-series-uid": (
        lambda: changed(SeriesInstanceUID="1.2.abc"),
        MISMATCH,
        "SeriesInstanceUID",
    ),
    "bits-allocated-12": (
        lambda: changed(BitsAllocated=12),
        MISMATCH,
        "BitsAllocated (must be one of 8, 16, 32)",
    ),
    "three-samples-per-pixel": (
        lambda: changed(SamplesPerPixel=3),
        MISMATCH,
        "SamplesPerPixel",
    ),
    "zero-rows": (lambda: changed(Rows=0), MISMATCH, "Rows (must be positive)"),
    "orientation-not-unit": (
        lambda: changed(ImageOrientationPatient=["2", "0", "0", "0", "1", "0"]),
        MISMATCH,
        "ImageOrientationPatient (direction cosines",
    ),
    "negative-number-of-frames": (
        lambda: changed(NumberOfFrames="-3"),
        MISMATCH,
        "NumberOfFrames (must be positive)",
    ),
    "position-with-two-numbers": (
        lambda: changed(ImagePositionPatient=["1", "2"]),
        MISMATCH,
        "ImagePositionPatient (needs 3 numbers)",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_dataset_is_refused_with_its_reason(scp: Scp, tmp_path: Path, case: str) -> None:
    build, code, phrase = MALFORMED[case]
    data, syntax = build()
    ds = pet()
    bad = raw_file(
        tmp_path / f"{case}.dcm", data, sop_instance=str(ds.SOPInstanceUID), syntax=syntax
    )

    def attack() -> None:
        (status,) = send_files(scp.port, [bad], syntax=syntax)
        refused_with(status, code, phrase)

    survives(scp, tmp_path, attack)
    assert scp.service.counters.refused == 1


def test_unknown_transfer_syntax_is_refused_at_negotiation(scp: Scp, tmp_path: Path) -> None:
    def attack() -> None:
        ae = AE(ae_title="ATTACKER")
        ae.acse_timeout = 10
        ae.add_requested_context(PositronEmissionTomographyImageStorage, "1.2.3.4.5.6.7")
        ae.add_requested_context(Verification)  # so that the association itself is accepted
        assoc = ae.associate(LOOPBACK, scp.port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            (pet_context,) = [
                c
                for c in assoc.rejected_contexts
                if c.abstract_syntax == PositronEmissionTomographyImageStorage
            ]
            # PS3.8 9.3.3.2: 4 = transfer syntaxes not supported (provider rejection).
            assert pet_context.result == 0x04
            assert all(
                c.abstract_syntax != PositronEmissionTomographyImageStorage
                for c in assoc.accepted_contexts
            )
        finally:
            assoc.release()

    survives(scp, tmp_path, attack)


def test_wrong_modality_is_dropped_and_counted_not_stored(scp: Scp, tmp_path: Path) -> None:
    ds = pet()
    ds.Modality = "CT"  # PET Image Storage that says it is CT
    bad = raw_file(tmp_path / "ct.dcm", encode(ds), sop_instance=str(ds.SOPInstanceUID))

    def attack() -> None:
        (status,) = send_files(scp.port, [bad])
        assert status is not None and status.Status == StoreStatus.SUCCESS  # ARCHITECTURE: dropped

    survives(scp, tmp_path, attack)
    assert scp.service.counters.ignored == 1
    assert any("1 non-PET ignored" in log.outcome for log in scp.logs())
