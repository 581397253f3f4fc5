"""The Store SCP's hot path (issue 2 benchmark): what it skips must not change what it stores.

petray.dicom.scp encodes the file meta itself, parses the dataset without a file around it, serves
C-STORE in pynetdicom's DUL thread and starts the file's fsync before the header is checked.
These tests pin each shortcut to the slow, obvious result, and fail when the pynetdicom internals
the dispatch relies on change.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom.config
import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dsutils import encode_file_meta as pynetdicom_encode_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PositronEmissionTomographyImageStorage,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import petray.dicom.ingest
from petray.db.models import Instance
from petray.demo.synth import make_pet_series
from petray.dicom.header import extract_instance_header
from petray.dicom.ingest import InstanceStore, ReceivedInstance
from petray.dicom.scp import (
    DUL_IDLE_SLEEP_S,
    PREAMBLE_AND_PREFIX,
    StoreService,
    UnreadableInstance,
    encode_file_meta,
    install_immediate_dispatch,
    read_header,
)
from petray.dicom.status import StoreStatus
from petray.site.siteconfig import Listener
from tests.support.peers import LOOPBACK, free_port

AE_TITLE = "PETRAY"


@pytest.fixture(autouse=True)
def production_pydicom_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in actors/store_scp.py: pydicom's own warnings would quote values (patient data).
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)


def _encode(ds: Dataset, syntax: UID) -> bytes:
    """The dataset as a sender puts it on the wire in ``syntax`` (no file meta)."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = syntax.is_implicit_VR
    buffer.is_little_endian = syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.fixture
def pet() -> list[Dataset]:
    return make_pet_series(slices=3, rows=16, cols=16, seed=3)


# -- file meta ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, ExplicitVRBigEndian]
)
@pytest.mark.parametrize("instance_uid", ["1.2.3.4", "1.2.3.45"], ids=["even", "odd"])
def test_file_meta_is_byte_identical_to_pynetdicoms(syntax: UID, instance_uid: str) -> None:
    expected = pynetdicom_encode_file_meta(
        create_file_meta(
            sop_class_uid=PositronEmissionTomographyImageStorage,
            sop_instance_uid=UID(instance_uid),
            transfer_syntax=syntax,
        )
    )
    assert encode_file_meta(PositronEmissionTomographyImageStorage, instance_uid, syntax) == (
        expected
    )


def test_file_meta_reads_back_with_pydicom() -> None:
    meta = encode_file_meta(PositronEmissionTomographyImageStorage, "1.2.3.45", RLELossless)
    ds = dcmread(BytesIO(PREAMBLE_AND_PREFIX + meta + _encode(Dataset(), RLELossless)))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta) - 12


# -- header from the raw dataset ----------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian],
    ids=["explicit-le", "implicit-le", "explicit-be"],
)
def test_read_header_matches_a_full_read_and_stops_at_pixel_data(
    pet: list[Dataset], syntax: UID
) -> None:
    source = pet[1]
    encoded = _encode(source, syntax)
    ds, offset = read_header(encoded, syntax)
    assert "PixelData" not in ds
    assert extract_instance_header(ds) == extract_instance_header(source)
    # The offset is the PixelData element itself: what check_pixel_data_complete reads.
    pixel_data = Tag("PixelData")
    order = "<" if syntax.is_little_endian else ">"
    assert struct.unpack_from(order + "HH", encoded, offset) == (
        pixel_data.group,
        pixel_data.element,
    )


def test_read_header_inflates_a_deflated_dataset(pet: list[Dataset]) -> None:
    import zlib

    plain = _encode(pet[0], ExplicitVRLittleEndian)
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = compressor.compress(plain) + compressor.flush()
    ds, _ = read_header(deflated, DeflatedExplicitVRLittleEndian)
    assert ds.SOPInstanceUID == pet[0].SOPInstanceUID
    with pytest.raises(UnreadableInstance, match="truncated"):
        read_header(deflated[: len(deflated) // 2], DeflatedExplicitVRLittleEndian)


def test_header_fast_values_equal_pydicoms(
    pet: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Values read from raw ASCII bytes give the same header as pydicom's own conversion."""
    import petray.dicom.header as header_module

    encoded = _encode(pet[2], ExplicitVRLittleEndian)
    fast = extract_instance_header(read_header(encoded, ExplicitVRLittleEndian)[0])
    monkeypatch.setattr(header_module, "_plain_value", lambda ds, keyword: header_module._SLOW)
    slow = extract_instance_header(read_header(encoded, ExplicitVRLittleEndian)[0])
    assert fast == slow


# -- pynetdicom internals the immediate dispatch relies on ----------------------------------------


def test_immediate_dispatch_installs_on_this_pynetdicom() -> None:
    assoc = Association(AE(ae_title=AE_TITLE), mode="acceptor")
    assert install_immediate_dispatch(assoc), (
        "pynetdicom internals changed: see petray/dicom/scp.py"
    )
    assert assoc.dul._run_loop_delay == DUL_IDLE_SLEEP_S
    served: list[tuple[object, int]] = []
    assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))  # type: ignore[method-assign]
    install_immediate_dispatch(assoc)
    assoc.dimse.msg_queue.put((3, "message"))  # type: ignore[arg-type]
    assert served == [("message", 3)]
    assert assoc.dimse.get_msg(block=False) == (None, None)


# -- end to end, fsync on -------------------------------------------------------------------------


@dataclass
class Running:
    port: int
    root: Path
    threads: list[threading.Thread] = field(default_factory=list)
    received: list[ReceivedInstance] = field(default_factory=list)

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())


@contextmanager
def durable_scp(root: Path, sessions: sessionmaker[Session]) -> Iterator[Running]:
    root.mkdir(parents=True, exist_ok=True)
    store = InstanceStore(root, sessions, min_free_bytes=0, fsync=True)
    running = Running(port=0, root=root)

    def on_instance(message: ReceivedInstance) -> None:
        running.threads.append(threading.current_thread())
        running.received.append(message)

    service = StoreService(store, sessions, on_instance=on_instance)
    server = service.start(Listener(ae_title=AE_TITLE, port=free_port(), bind=LOOPBACK))
    running.port = server.server_address[1]
    try:
        yield running
    finally:
        server.shutdown()


def _send(
    port: int, datasets: list[Dataset], sop_class: str = PositronEmissionTomographyImageStorage
) -> list[int]:
    ae = AE(ae_title="PYSCU")
    assoc = ae.associate(
        LOOPBACK,
        port,
        contexts=[build_context(sop_class, ExplicitVRLittleEndian)],
        ae_title=AE_TITLE,
    )
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_stored_file_is_the_received_dataset_with_its_meta(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pet: list[Dataset]
) -> None:
    with durable_scp(tmp_path / "instances", sqlite_sessions) as running:
        statuses = _send(running.port, pet)
    assert statuses == [int(StoreStatus.SUCCESS)] * len(pet)
    # Served in the DUL thread: the immediate dispatch is in place, no 1 ms polling.
    assert all(isinstance(thread, DULServiceProvider) for thread in running.threads)
    files = running.files()
    assert len(files) == len(pet)
    with sqlite_sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Instance))}
    for ds in pet:
        path = Path(rows[ds.SOPInstanceUID].path)
        expected = PREAMBLE_AND_PREFIX + pynetdicom_encode_file_meta(
            create_file_meta(
                sop_class_uid=PositronEmissionTomographyImageStorage,
                sop_instance_uid=ds.SOPInstanceUID,
                transfer_syntax=ExplicitVRLittleEndian,
            )
        )
        data = path.read_bytes()
        assert data.startswith(expected)
        stored = dcmread(path)
        assert stored.PixelData == ds.PixelData
        assert stored.SOPInstanceUID == ds.SOPInstanceUID


def test_refused_pet_instance_leaves_no_file_and_no_row(
    tmp_path: Path, sqlite_sessions: sessionmaker[Session], pet: list[Dataset]
) -> None:
    broken = pet[0]
    del broken.ImagePositionPatient
    with durable_scp(tmp_path / "instances", sqlite_sessions) as running:
        statuses = _send(running.port, [broken])
    assert statuses == [int(StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS)]
    assert running.files() == []
    with sqlite_sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


def test_non_pet_instance_is_never_written(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    pet: list[Dataset],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[str] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: int) -> int:
        if flags & os.O_CREAT:
            created.append(str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(petray.dicom.ingest.os, "open", recording_open)
    ct = pet[0]
    ct.SOPClassUID = CTImageStorage
    ct.Modality = "CT"
    ct.SOPInstanceUID = generate_uid()
    with durable_scp(tmp_path / "instances", sqlite_sessions) as running:
        statuses = _send(running.port, [ct], sop_class=CTImageStorage)
    assert statuses == [int(StoreStatus.SUCCESS)]
    assert created == []
    assert running.received == []


def test_failed_fsync_commits_no_row_and_leaves_no_file(
    tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
    pet: list[Dataset],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(petray.dicom.ingest.os, "fsync", failing_fsync)
    with durable_scp(tmp_path / "instances", sqlite_sessions) as running:
        statuses = _send(running.port, pet[:1])
    assert statuses == [int(StoreStatus.PROCESSING_FAILURE)]
    assert running.files() == []
    assert running.received == []
    with sqlite_sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
