"""Property-based fuzzing of the ingest header parser and the result-archive reader (issue 9).

Inputs are a valid PET instance or result archive with random damage (bytes flipped, cut,
inserted, lengths rewritten) or random bytes. The properties:

- the header parser (``petray.dicom.scp.read_header``, ``petray.dicom.header``) raises nothing but
  UnreadableInstance or InvalidInstance;
- the Store SCP's C-STORE handler answers every such instance with a named refusal (0xA900 or
  0xC000, with a reason) or stores it; never a processing failure (0x0110, what an unexpected
  exception becomes), and nothing escapes it;
- the result-archive checks (``verify_zip``, ``read_result_archive``) raise nothing but
  ArchiveRejected.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.sop_class import PositronEmissionTomographyImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import make_engine, make_sessionmaker
from petray.dicom.header import extract_instance_header
from petray.dicom.ingest import InstanceStore
from petray.dicom.scp import IngestLimits, StoreService, UnreadableInstance, read_header
from petray.dicom.status import StoreStatus
from petray.errors import ArchiveRejected, InvalidInstance
from petray.service.archive import (
    DENOISED_NAME,
    METADATA_NAME,
    NOISE_NAME,
    read_result_archive,
    verify_zip,
)
from tests.support.databases import migrated_sqlite
from tests.test_hostile_dicom import deflate, encode, pet

EXAMPLES = 150
REFUSALS = {StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, StoreStatus.CANNOT_UNDERSTAND}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same cases on every run: CI failures reproduce
)
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]

GOOD = pet()
GOOD_BYTES = {syntax: encode(GOOD, syntax) for syntax in SYNTAXES}


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with one to four random kinds of damage."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length", "splice", "zero"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "length" and at + 4 <= len(data):
            # A length field rewritten: huge, odd, undefined or zero.
            value = draw(st.sampled_from([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]))
            data[at : at + 4] = struct.pack("<I", value)
        elif kind == "splice":
            end = draw(st.integers(at, len(data)))
            data[at:end] = data[at:end][::-1]
        elif kind == "zero":
            end = min(len(data), at + draw(st.integers(1, 64)))
            data[at:end] = bytes(end - at)
    return bytes(data)


GOOD_DEFLATED = deflate([GOOD_BYTES[ExplicitVRLittleEndian]])


@st.composite
def hostile_dataset(draw: st.DrawFn) -> tuple[UID, bytes]:
    syntax = draw(st.sampled_from([*SYNTAXES, DeflatedExplicitVRLittleEndian]))
    if draw(st.integers(0, 9)) == 0:
        return syntax, draw(st.binary(max_size=512))
    if syntax != DeflatedExplicitVRLittleEndian:
        return syntax, draw(damaged(GOOD_BYTES[syntax]))
    if draw(st.booleans()):  # a damaged dataset, well deflated
        return syntax, deflate([draw(damaged(GOOD_BYTES[ExplicitVRLittleEndian]))])
    return syntax, draw(damaged(GOOD_DEFLATED))  # a damaged deflate stream


@FUZZ
@given(case=hostile_dataset())
def test_header_parser_raises_only_petray_errors(case: tuple[UID, bytes]) -> None:
    syntax, data = case
    try:
        ds, _offset = read_header(data, syntax)
        extract_instance_header(ds)
    except (UnreadableInstance, InvalidInstance) as exc:
        assert str(exc)  # names what is wrong


# -- the C-STORE handler, called as pynetdicom calls it -------------------------------------------


@dataclass
class Requestor:
    ae_title: str = "FUZZER"
    address: str = "127.0.0.1"


@dataclass
class Association:
    requestor: Requestor = field(default_factory=Requestor)


@dataclass
class Context:
    transfer_syntax: str
    abstract_syntax: str = PositronEmissionTomographyImageStorage


@dataclass
class Request:
    DataSet: io.BytesIO
    AffectedSOPInstanceUID: str
    AffectedSOPClassUID: str = PositronEmissionTomographyImageStorage


@dataclass
class StoreEvent:
    assoc: Association
    request: Request
    context: Context


@pytest.fixture(scope="module")
def service() -> Iterator[StoreService]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        engine = make_engine(migrated_sqlite(root / "petray.db"))
        sessions: sessionmaker[Session] = make_sessionmaker(engine)
        (root / "instances").mkdir()
        store = InstanceStore(root / "instances", sessions, min_free_bytes=0, fsync=False)
        yield StoreService(store, sessions, on_instance=lambda _: None, limits=IngestLimits())
        engine.dispose()


def answer(service: StoreService, syntax: UID, data: bytes) -> int | Dataset:
    event = StoreEvent(
        Association(),
        Request(io.BytesIO(data), AffectedSOPInstanceUID=str(GOOD.SOPInstanceUID)),
        Context(transfer_syntax=str(syntax)),
    )
    return service._on_store(event)  # type: ignore[arg-type]


def test_the_handler_stores_the_undamaged_instance(service: StoreService) -> None:
    for syntax in SYNTAXES:
        assert answer(service, syntax, GOOD_BYTES[syntax]) == StoreStatus.SUCCESS
    deflated = deflate([GOOD_BYTES[ExplicitVRLittleEndian]])
    assert answer(service, DeflatedExplicitVRLittleEndian, deflated) == StoreStatus.SUCCESS


@FUZZ
@given(case=hostile_dataset())
def test_every_damaged_instance_gets_a_named_refusal_or_is_stored(
    service: StoreService, case: tuple[UID, bytes]
) -> None:
    syntax, data = case
    status = answer(service, syntax, data)
    if isinstance(status, int):
        assert status == StoreStatus.SUCCESS
        return
    assert status.Status in REFUSALS, (hex(status.Status), status.get("ErrorComment"))
    assert str(status.ErrorComment).strip()


# -- result archives ------------------------------------------------------------------------------

SHAPE = (3, 4, 5)
TASK_ID = "0123456789abcdef0123456789abcdef"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def good_archive() -> bytes:
    data = np.random.default_rng(3).gamma(2.0, 300.0, size=SHAPE).astype(np.float32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(DENOISED_NAME, npy(data))
        zf.writestr(NOISE_NAME, npy(np.zeros(SHAPE, np.float32)))
        zf.writestr(METADATA_NAME, json.dumps({"task_id": TASK_ID}))
    return buffer.getvalue()


GOOD_ARCHIVE = good_archive()


@st.composite
def hostile_npy(draw: st.DrawFn) -> bytes:
    """An .npy whose header says random things: dtype, shape, order, version, lengths."""
    dtype = draw(st.sampled_from(["<f4", ">f4", "<f8", "<i2", "|u1", "|O", "<c8", "V8", "<U3"]))
    shape = draw(st.lists(st.integers(-2, 2**31), min_size=0, max_size=4).map(tuple))
    header = repr({"descr": dtype, "fortran_order": draw(st.booleans()), "shape": shape})
    if draw(st.booleans()):
        header = draw(st.text(max_size=80))
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    encoded = header.encode("utf-8", "replace")
    size = (
        struct.pack("<H", len(encoded))
        if version == b"\x01\x00"
        else struct.pack("<I", len(encoded))
    )
    return b"\x93NUMPY" + version + size + encoded + draw(st.binary(max_size=256))


@st.composite
def hostile_archive(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return draw(damaged(GOOD_ARCHIVE))
    if choice == 1:
        return draw(st.binary(max_size=1024))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(DENOISED_NAME, draw(hostile_npy()))
        metadata = draw(
            st.one_of(
                st.just(json.dumps({"task_id": TASK_ID})),
                st.text(max_size=64),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
                    ),
                    max_leaves=8,
                ).map(json.dumps),
            )
        )
        zf.writestr(METADATA_NAME, metadata)
    return buffer.getvalue()


@FUZZ
@given(data=hostile_archive())
def test_result_archive_reader_raises_only_archive_rejected(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "result.zip"
    path.write_bytes(data)
    try:
        verify_zip(path, max_uncompressed_bytes=2**20)  # the Downloader's check comes first
    except ArchiveRejected as exc:
        assert str(exc)
    try:
        result = read_result_archive(
            path,
            expected_shape=SHAPE,
            max_uncompressed_bytes=2**20,
            expected_task_id=TASK_ID,
            input_peak=1000.0,
            max_factor=100.0,
        )
    except ArchiveRejected as exc:
        assert str(exc)
        return
    # Whatever passed is what the Unpacker may use: the right shape, float32, finite.
    assert result.denoised.shape == SHAPE
    assert result.denoised.dtype == np.float32
    assert np.isfinite(result.denoised).all()
