"""The Store SCP (petray.dicom.scp.StoreService, no Ray) against real senders: DCMTK, Orthanc,
pynetdicom.

Each test starts its own listener on a free loopback port and shuts it down afterwards. The
on_instance callback looks the instance up in the database when the message arrives, which is
how the tests prove "file and row first, then the message" (issue 2).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom.config
import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, build_context
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PositronEmissionTomographyImageStorage,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog, Instance
from petray.demo.synth import make_pet_series, write_series
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.dicom.scp import ACCEPTED_TRANSFER_SYNTAXES, StoreService
from petray.dicom.status import StoreStatus
from petray.site.siteconfig import Listener, add_device, get_site_config
from tests.support.peers import LOOPBACK, OrthancPeer, free_port, run_echoscu, run_storescu

pytest_plugins = ["tests.support.peers"]
pytestmark = pytest.mark.peers

AE_TITLE = "PETRAY"
SLICES = 12
BIND_ATTEMPTS = 3
EVENT_TIMEOUT_S = 10.0
# storescu -v logs one line per answered C-STORE; the success status is printed by name.
STORESCU_SUCCESS = "Received Store Response (Success)"


@dataclass
class Delivered:
    """One on_instance message and what the database and disk held when it arrived."""

    message: ReceivedInstance
    row_path: str | None
    file_existed: bool


@dataclass
class RunningScp:
    service: StoreService
    sessions: sessionmaker[Session]
    port: int
    root: Path
    delivered: list[Delivered] = field(default_factory=list)
    # Called in the association thread after each delivery; a test may block in it.
    hook: Callable[[Delivered], None] | None = None

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def rows(self) -> list[Instance]:
        with self.sessions() as session:
            return list(session.scalars(select(Instance).order_by(Instance.id)))

    def association_logs(self, count: int) -> list[AssociationLog]:
        """The association log is written from the release event, just after the peer leaves."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            with self.sessions() as session:
                logs = list(session.scalars(select(AssociationLog).order_by(AssociationLog.id)))
            if len(logs) >= count or time.monotonic() > deadline:
                return logs
            time.sleep(0.05)


@contextmanager
def running_scp(
    root: Path,
    sessions: sessionmaker[Session],
    *,
    min_free_bytes: int = 0,
) -> Iterator[RunningScp]:
    root.mkdir(parents=True, exist_ok=True)
    store = InstanceStore(root, sessions, min_free_bytes=min_free_bytes, fsync=False)
    holder: list[RunningScp] = []

    def collect(message: ReceivedInstance) -> None:
        # Runs in pynetdicom's association thread, before the sender gets its answer.
        with sessions() as session:
            row = session.get(Instance, message.instance_pk)
            row_path = row.path if row is not None else None
        delivered = Delivered(message, row_path, bool(row_path) and Path(str(row_path)).is_file())
        running = holder[0]
        running.delivered.append(delivered)
        if running.hook is not None:
            running.hook(delivered)

    service = StoreService(store, sessions, on_instance=collect)
    for attempt in range(BIND_ATTEMPTS):
        port = free_port()
        try:
            server = service.start(Listener(ae_title=AE_TITLE, port=port, bind=LOOPBACK))
            break
        except OSError:
            if attempt == BIND_ATTEMPTS - 1:
                raise
    holder.append(RunningScp(service=service, sessions=sessions, port=port, root=root))
    try:
        yield holder[0]
    finally:
        server.shutdown()


@pytest.fixture(autouse=True)
def production_pydicom_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in actors/store_scp.py: pydicom's own warnings would quote values (patient data).
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


@pytest.fixture
def scp(tmp_path: Path, sqlite_sessions: sessionmaker[Session]) -> Iterator[RunningScp]:
    with running_scp(tmp_path / "instances", sqlite_sessions) as running:
        yield running


def _series(
    directory: Path, *, slices: int = SLICES, seed: int = 0, **overrides: object
) -> list[Path]:
    return write_series(
        make_pet_series(slices=slices, rows=32, cols=32, seed=seed, **overrides), directory
    )


def _dataset_bytes(path: Path | str) -> bytes:
    """The encoded dataset after the File Meta Information: what went over the wire."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


def _storescu(paths: Sequence[Path], port: int, **kwargs: object) -> str:
    result = run_storescu(
        paths,
        port=port,
        called_ae=AE_TITLE,
        extra_args=["-v"],
        **kwargs,  # type: ignore[arg-type]
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@contextmanager
def scu(port: int, *, sop_class: str = PositronEmissionTomographyImageStorage) -> Iterator[object]:
    """A pynetdicom association to the SCP, for tests that read the returned status dataset."""
    ae = AE(ae_title="PYSCU")
    contexts = [build_context(sop_class, ts) for ts in (ExplicitVRLittleEndian, RLELossless)]
    assoc = ae.associate(LOOPBACK, port, contexts=contexts, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


# -- DCMTK storescu ---------------------------------------------------------------------------


def test_storescu_series_rows_and_files_before_each_message(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    paths = _series(tmp_path / "sent")
    with running_scp(tmp_path / "instances", sessions) as running:
        output = _storescu(paths, running.port, calling_ae="SCANNER1")

        assert output.count(STORESCU_SUCCESS) == len(paths)
        assert len(running.delivered) == len(paths)
        for delivered in running.delivered:
            assert delivered.row_path is not None, "message sent before the row was committed"
            assert delivered.file_existed, "message sent before the file was written"
            assert delivered.message.calling_ae == "SCANNER1"
            assert delivered.message.number_of_slices == SLICES
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
        rows = running.rows()
        assert sorted(r.sop_instance_uid for r in rows) == sorted(sent)
        for row in rows:
            assert _dataset_bytes(row.path) == _dataset_bytes(sent[row.sop_instance_uid])
            assert dcmread(row.path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert running.service.counters.received == len(paths)
        assert running.service.counters.refused == running.service.counters.ignored == 0
        assert len(running.stored_files()) == len(paths)


def test_association_log_records_instances_after_release(scp: RunningScp, tmp_path: Path) -> None:
    paths = _series(tmp_path / "sent", slices=5)
    _storescu(paths, scp.port, calling_ae="LOGGED")
    (log,) = scp.association_logs(1)
    assert log.calling_ae == "LOGGED"
    assert log.called_ae == AE_TITLE
    assert log.instances == 5
    assert log.refused == 0
    assert log.outcome.startswith("released")
    assert log.ended is not None and log.ended >= log.started
    assert scp.service.counters.associations == 1


def test_two_senders_interleaving_two_series(scp: RunningScp, tmp_path: Path) -> None:
    series_a = _series(tmp_path / "a", seed=1)
    series_b = _series(tmp_path / "b", seed=2)
    # Hold each sender's first instance until the other sender's first one has arrived, so the
    # two associations are provably interleaved rather than merely started together.
    arrived = {"SCANNER_A": threading.Event(), "SCANNER_B": threading.Event()}
    other = {"SCANNER_A": "SCANNER_B", "SCANNER_B": "SCANNER_A"}
    waited: list[bool] = []

    def rendezvous(delivered: Delivered) -> None:
        ae = delivered.message.calling_ae
        arrived[ae].set()
        waited.append(arrived[other[ae]].wait(EVENT_TIMEOUT_S))

    scp.hook = rendezvous
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(
            pool.map(
                lambda job: _storescu(job[0], scp.port, calling_ae=job[1]),
                [(series_a, "SCANNER_A"), (series_b, "SCANNER_B")],
            )
        )
    assert all(out.count(STORESCU_SUCCESS) == SLICES for out in outputs)
    assert all(waited)
    assert {d.message.calling_ae for d in scp.delivered[:2]} == {"SCANNER_A", "SCANNER_B"}
    by_ae: dict[str, set[str]] = {}
    series_of: dict[str, set[int]] = {}
    for delivered in scp.delivered:
        by_ae.setdefault(delivered.message.calling_ae, set()).add(
            delivered.message.sop_instance_uid
        )
        series_of.setdefault(delivered.message.calling_ae, set()).add(delivered.message.series_pk)
    expected = {
        ae: {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        for ae, paths in (("SCANNER_A", series_a), ("SCANNER_B", series_b))
    }
    assert by_ae == expected
    assert len(series_of["SCANNER_A"]) == len(series_of["SCANNER_B"]) == 1
    assert series_of["SCANNER_A"] != series_of["SCANNER_B"]
    assert {r.calling_ae for r in scp.rows()} == {"SCANNER_A", "SCANNER_B"}
    assert len(scp.association_logs(2)) == 2


def test_repeated_instance_is_stored_twice(scp: RunningScp, tmp_path: Path) -> None:
    (path,) = _series(tmp_path / "sent", slices=1)
    output = _storescu([path, path], scp.port)
    assert output.count(STORESCU_SUCCESS) == 2
    rows = scp.rows()
    assert len(rows) == 2
    assert rows[0].sop_instance_uid == rows[1].sop_instance_uid
    assert rows[0].path != rows[1].path
    assert len(scp.stored_files()) == 2
    assert [d.message.instance_pk for d in scp.delivered] == [r.id for r in rows]


@pytest.mark.parametrize(
    "syntax",
    [
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        DeflatedExplicitVRLittleEndian,
    ],
    ids=["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless-sv1", "deflated"],
)
def test_compressed_transfer_syntaxes_are_accepted(
    scp: RunningScp, tmp_path: Path, syntax: str
) -> None:
    assert syntax in ACCEPTED_TRANSFER_SYNTAXES
    paths = _series(tmp_path / "sent", slices=3, transfer_syntax=syntax)
    assert str(dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    output = _storescu(paths, scp.port)
    assert output.count(STORESCU_SUCCESS) == 3
    rows = scp.rows()
    assert len(rows) == 3
    sent = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in paths}
    for row in rows:
        stored = dcmread(row.path)
        # Kept as the sender encoded it: nothing is decoded or re-encoded on the ingest path.
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == sent[row.sop_instance_uid].PixelData
        assert (stored.pixel_array == sent[row.sop_instance_uid].pixel_array).all()


# -- Orthanc as the sender ----------------------------------------------------------------------


def test_orthanc_sends_a_series(scp: RunningScp, orthanc: OrthancPeer, tmp_path: Path) -> None:
    paths = _series(tmp_path / "sent")
    for path in paths:
        orthanc.upload(path)
    (series,) = orthanc.series()
    orthanc.add_modality("petray", AE_TITLE, LOOPBACK, scp.port)
    assert orthanc.echo("petray")
    answer = orthanc.store_to("petray", [series["ID"]])
    assert answer.get("FailedInstancesCount", 0) == 0
    assert answer.get("InstancesCount") == len(paths)
    sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    assert {d.message.sop_instance_uid for d in scp.delivered} == sent
    assert {d.message.calling_ae for d in scp.delivered} == {orthanc.aet}
    assert all(d.row_path and d.file_existed for d in scp.delivered)
    assert len(scp.rows()) == len(paths)


# -- instances petray does not take -------------------------------------------------------------


def _as_ct(path: Path, out: Path) -> Path:
    ds = dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.save_as(out, enforce_file_format=True)
    return out


def _pet_with_modality_ct(path: Path, out: Path) -> Path:
    ds = dcmread(path)
    ds.Modality = "CT"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("make", [_as_ct, _pet_with_modality_ct], ids=["ct-image", "pet-class-ct"])
def test_non_pet_instances_are_acknowledged_but_not_stored(
    scp: RunningScp, tmp_path: Path, make: Callable[[Path, Path], Path]
) -> None:
    (pet,) = _series(tmp_path / "sent", slices=1)
    other = make(pet, tmp_path / "other.dcm")
    output = _storescu([other], scp.port)
    # Success, so that a PACS forwarding a PET/CT study does not retry the CT forever.
    assert output.count(STORESCU_SUCCESS) == 1
    assert scp.service.counters.ignored == 1
    assert scp.service.counters.received == 0
    assert scp.delivered == []
    assert scp.rows() == []
    assert scp.stored_files() == []
    (log,) = scp.association_logs(1)
    assert "1 non-PET ignored" in log.outcome


def test_missing_mandatory_tags_fail_with_a_comment(scp: RunningScp) -> None:
    (ds,) = make_pet_series(slices=1, rows=8, cols=8)
    del ds.ImagePositionPatient
    del ds.PixelSpacing
    with scu(scp.port) as assoc:
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    assert status.Status == StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "PixelSpacing" in status.ErrorComment
    assert "ImagePositionPatient" in status.ErrorComment
    assert len(status.ErrorComment) <= 64
    assert scp.rows() == [] and scp.stored_files() == []
    assert scp.service.counters.refused == 1


def test_storescu_reports_the_missing_tag(scp: RunningScp, tmp_path: Path) -> None:
    (ds,) = make_pet_series(slices=1, rows=8, cols=8)
    del ds.RescaleSlope
    path = tmp_path / "no-slope.dcm"
    ds.save_as(path, enforce_file_format=True)
    # At debug level storescu dumps the response, Error Comment included.
    result = run_storescu([path], port=scp.port, called_ae=AE_TITLE, extra_args=["-d"])
    output = result.stdout + result.stderr
    assert "Received Store Response" in output
    assert STORESCU_SUCCESS not in output
    assert "ErrorComment" in output
    assert "missing mandatory attributes: RescaleSlope" in output
    assert scp.rows() == []


# -- corrupt data: the service answers a failure and keeps going --------------------------------


def _corrupt_file(good: Path, out: Path, kind: str) -> Path:
    data = good.read_bytes()
    _, offset = split_dataset(good)
    if kind == "truncated-header":
        # Cut inside the header, well before PixelData.
        data = data[: offset + 200]
    elif kind in ("truncated-pixels", "truncated-fragment"):
        # Cut inside the (native or encapsulated) pixel data, after a complete header.
        data = data[:-500]
    elif kind == "garbage":
        data = data[:offset] + bytes(range(7, 250)) * 20
    elif kind == "bad-element-length":
        # ImageOrientationPatient (DS) whose declared length runs past the end of the data.
        tag = b"\x20\x00\x37\x00DS"
        at = data.index(tag, offset)
        data = data[: at + 6] + (60000).to_bytes(2, "little") + data[at + 8 :]
    elif kind == "bad-number":
        # ImagePositionPatient (DS) with letters in place of its numbers, same length.
        tag = b"\x20\x00\x32\x00DS"
        at = data.index(tag, offset)
        length = int.from_bytes(data[at + 6 : at + 8], "little")
        data = data[: at + 8] + b"x" * length + data[at + 8 + length :]
    else:
        raise AssertionError(kind)
    out.write_bytes(data)
    return out


@pytest.mark.parametrize(
    "kind",
    [
        "truncated-header",
        "truncated-pixels",
        "truncated-fragment",
        "garbage",
        "bad-element-length",
        "bad-number",
    ],
)
def test_corrupt_dataset_fails_and_service_keeps_running(
    scp: RunningScp, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    syntax = RLELossless if kind == "truncated-fragment" else ExplicitVRLittleEndian
    good, spare = _series(tmp_path / "sent", slices=2, transfer_syntax=syntax)
    bad = _corrupt_file(good, tmp_path / f"{kind}.dcm", kind)
    # Send the file's bytes as they are, without pynetdicom decoding and re-encoding them.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with scu(scp.port) as assoc:
        refused = assoc.send_c_store(bad)  # type: ignore[attr-defined]
        accepted = assoc.send_c_store(spare)  # type: ignore[attr-defined]
    assert refused.Status != StoreStatus.SUCCESS
    assert refused.Status in (
        StoreStatus.CANNOT_UNDERSTAND,
        StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    )
    assert refused.ErrorComment
    if kind in ("truncated-pixels", "truncated-fragment"):
        assert "truncated" in refused.ErrorComment
    assert accepted.Status == StoreStatus.SUCCESS
    (row,) = scp.rows()
    assert row.sop_instance_uid == str(dcmread(spare, stop_before_pixels=True).SOPInstanceUID)
    assert len(scp.stored_files()) == 1
    assert scp.service.counters.refused == 1
    assert scp.service.counters.received == 1


# -- resources and access -----------------------------------------------------------------------


def test_disk_floor_answers_out_of_resources(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session]
) -> None:
    (ds,) = make_pet_series(slices=1, rows=8, cols=8)
    with running_scp(tmp_path / "instances", sqlite_sessions, min_free_bytes=2**62) as running:
        with scu(running.port) as assoc:
            status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
        assert status.Status == StoreStatus.OUT_OF_RESOURCES
        assert "disk" in status.ErrorComment
        assert running.rows() == [] and running.stored_files() == []
        assert running.delivered == []


def test_calling_ae_whitelist(scp: RunningScp, tmp_path: Path) -> None:
    with unit_of_work(scp.sessions) as session:
        get_site_config(session=session).restrict_sources = True
        add_device(
            session=session,
            name="scanner",
            ae_title="KNOWN",
            host=LOOPBACK,
            port=104,
            is_source=True,
            is_destination=False,
        )
    refused = run_echoscu(port=scp.port, called_ae=AE_TITLE, calling_ae="STRANGER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    paths = _series(tmp_path / "sent", slices=2)
    stranger = run_storescu(paths, port=scp.port, called_ae=AE_TITLE, calling_ae="STRANGER")
    assert stranger.returncode != 0
    assert scp.rows() == []
    output = _storescu(paths, scp.port, calling_ae="KNOWN")
    assert output.count(STORESCU_SUCCESS) == 2
    assert {r.calling_ae for r in scp.rows()} == {"KNOWN"}
    assert run_echoscu(port=scp.port, called_ae=AE_TITLE, calling_ae="KNOWN").returncode == 0


def test_echoscu(scp: RunningScp) -> None:
    result = run_echoscu(port=scp.port, called_ae=AE_TITLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert scp.service.counters.associations == 1
