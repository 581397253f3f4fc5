"""The Store SCP: accepts PET instances over DICOM and stores them durably before answering.

Dependencies reach the handlers through pynetdicom's handler binding (no globals). The SCP stores
only PET; other storage SOP classes are accepted at association level so that a PACS forwarding
a whole PET/CT study is not made to retry forever, but their instances are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, cast

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import AssociationLog
from petray.dicom.header import ACCEPTED_SOP_CLASSES, extract_instance_header, is_pet
from petray.dicom.status import StoreStatus
from petray.errors import InvalidInstance
from petray.ingest import DiskFull, InstanceStore, ReceivedInstance
from petray.siteconfig import Listener, calling_ae_whitelist, get_site_config

logger = logging.getLogger(__name__)

# Uncompressed and the lossless compressed syntaxes a PACS may forward (issue 2); decoders for
# the compressed ones are installed with petray, and nothing is decoded on the ingest path.
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEG2000Lossless,
]
assert set(ACCEPTED_TRANSFER_SYNTAXES) <= set(ALL_TRANSFER_SYNTAXES)
MAX_PDU_BYTES = 262_144
MAX_ASSOCIATIONS = 32
PIXEL_DATA_TAG = (0x7FE0, 0x0010)
ITEM_TAG = (0xFFFE, 0xE000)
SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_DATA_TAGS = frozenset(
    tag_for_keyword(keyword) for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
)
# PS3.10 7.1: a 128-byte preamble (zeros: no application profile) and the "DICM" prefix.
PREAMBLE_AND_PREFIX = b"\x00" * 128 + b"DICM"
# pynetdicom's DUL reactor sleeps this long whenever it finds nothing to do, i.e. after sending
# every C-STORE response and before it sees the next request. Its default (1 ms) alone costs a
# third of Orthanc's whole time per instance; 0.1 ms costs about 7% of a core per association
# while it is open and idle (measured), and 0 (a busy loop) starves the handler thread.
DUL_IDLE_SLEEP_S = 1e-4


@dataclass
class IngestCounters:
    received: int = 0
    ignored: int = 0
    refused: int = 0
    associations: int = 0
    last_received: str = ""


@dataclass
class _OpenAssociation:
    log: AssociationLog
    instances: int = 0
    refused: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)


def _failure(status: StoreStatus, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    # ErrorComment is LO: 64 characters at most (PS3.7 C.4.2.1.4).
    ds.ErrorComment = comment[:64]
    return ds


def check_pixel_data_complete(encoded: bytes, offset: int, syntax: UID) -> None:
    """Raise EOFError when the PixelData element at ``offset`` is cut short.

    The header is parsed with ``stop_before_pixels``, so a dataset truncated inside its pixel
    data would otherwise be stored and acknowledged, and fail only much later in the packer.
    Only element headers are read (the lengths of the value and of each fragment), never the
    pixel values. A deflated dataset is not checked here: zlib already fails on a cut stream.
    """
    if syntax == DeflatedExplicitVRLittleEndian:
        return
    end = len(encoded)
    order = "<" if syntax.is_little_endian else ">"

    def tag_at(at: int) -> tuple[int, int]:
        if at + 8 > end:
            raise EOFError("dataset truncated in an element header")
        group, element = struct.unpack_from(order + "HH", encoded, at)
        return group, element

    if offset >= end:
        raise EOFError("dataset ends before PixelData")
    if tag_at(offset) != PIXEL_DATA_TAG:
        return  # another element follows the header; pydicom stopped for another reason
    if syntax.is_implicit_VR:
        (length,) = struct.unpack_from(order + "I", encoded, offset + 4)
        value_at = offset + 8
    else:
        if offset + 12 > end:
            raise EOFError("dataset truncated in the PixelData header")
        (length,) = struct.unpack_from(order + "I", encoded, offset + 8)
        value_at = offset + 12
    if length != UNDEFINED_LENGTH:
        if value_at + length > end:
            raise EOFError(f"PixelData truncated: {end - value_at} of {length} bytes")
        return
    # Encapsulated (PS3.5 A.4): items, each with its own length, then a sequence delimiter.
    at = value_at
    while True:
        item = tag_at(at)
        (item_length,) = struct.unpack_from("<I", encoded, at + 4)
        if item == SEQUENCE_DELIMITER_TAG:
            return
        if item != ITEM_TAG or item_length == UNDEFINED_LENGTH:
            raise EOFError("encapsulated PixelData is malformed")
        at += 8 + item_length
        if at > end:
            raise EOFError("encapsulated PixelData truncated inside a fragment")


def _meta_element(keyword: str, vr: str, value: bytes) -> bytes:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    group, element = tag >> 16, tag & 0xFFFF
    if len(value) % 2:
        # PS3.5 6.2: UI is padded with NUL, the text VRs with a space.
        value += b"\x00" if vr == "UI" else b" "
    if vr == "OB":  # PS3.5 7.1.2: OB has a reserved field and a 32-bit length
        return struct.pack("<HH2s2xI", group, element, b"OB", len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The File Meta Information group (PS3.10 7.1), as pynetdicom's ``Event.file_meta`` has it.

    Encoded directly (explicit VR little endian, PS3.10 7.1) because building it through a pydicom
    FileMetaDataset costs a tenth of the whole per-instance budget on the ingest hot path; the
    bytes are the same as pynetdicom's ``encoded_dataset(include_meta=True)`` (checked in tests).
    """
    body = b"".join(
        (
            _meta_element("FileMetaInformationVersion", "OB", b"\x00\x01"),
            _meta_element("MediaStorageSOPClassUID", "UI", sop_class_uid.encode("ascii")),
            _meta_element("MediaStorageSOPInstanceUID", "UI", sop_instance_uid.encode("ascii")),
            _meta_element("TransferSyntaxUID", "UI", transfer_syntax.encode("ascii")),
            _meta_element("ImplementationClassUID", "UI", PYNETDICOM_IMPLEMENTATION_UID.encode()),
            _meta_element(
                "ImplementationVersionName", "SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode()
            ),
        )
    )
    group_length = _meta_element(
        "FileMetaInformationGroupLength", "UL", struct.pack("<I", len(body))
    )
    return group_length + body


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag in PIXEL_DATA_TAGS


def read_header(dataset: bytes, syntax: UID) -> tuple[Dataset, int]:
    """The dataset's elements before its pixel data, and the offset where the pixel data start.

    ``dataset`` is the encoded C-STORE dataset, without file meta: parsing it directly instead of
    a whole file built around it skips encoding and re-reading the file meta on the hot path.
    For a deflated dataset the offset is into the inflated bytes.
    """
    if syntax == DeflatedExplicitVRLittleEndian:
        try:
            dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise EOFError(f"deflated dataset is corrupt: {exc}") from None
    fp = BytesIO(dataset)
    ds = read_dataset(fp, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_at_pixel_data)
    return ds, fp.tell()


class _ImmediateDispatch(queue.Queue[Any]):
    """Stands in for a DIMSE provider's message queue and serves each request as it is queued.

    pynetdicom's association reactor polls this queue after a fixed 1 ms sleep, which doubles the
    time per instance of a small series. Serving the request in the DUL thread that decoded it
    removes that wait. This is safe for what this SCP serves: C-STORE and C-ECHO handlers only
    queue their response for the DUL thread to send and never wait for the peer (unlike C-GET or
    C-MOVE sub-operations), and the peer waits for our response before it sends the next request.
    Relies on pynetdicom internals (``dimse.msg_queue`` items and ``Association._serve_request``,
    checked by tests/test_scp_fastpath.py); if those change, ``install_immediate_dispatch``
    leaves the association on pynetdicom's own polling.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._serve = assoc._serve_request

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        self._serve(message, context_id)


def install_immediate_dispatch(assoc: Association) -> bool:
    """Make an accepted association answer without pynetdicom's polling sleeps; True if done.

    Call before the association starts (EVT_CONN_OPEN): both attributes are read by its threads.
    """
    dul, dimse = assoc.dul, assoc.dimse
    sock = getattr(dul.socket, "socket", None)
    if sock is not None:
        # Each response is one small send the peer waits for: never let Nagle hold it back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not (
        hasattr(dul, "_run_loop_delay")
        and isinstance(getattr(dimse, "msg_queue", None), queue.Queue)
        and callable(getattr(assoc, "_serve_request", None))
    ):
        return False
    dul._run_loop_delay = DUL_IDLE_SLEEP_S
    dimse.msg_queue = _ImmediateDispatch(assoc)
    return True


class StoreService:
    """C-STORE and C-ECHO handlers plus association bookkeeping for one listener."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        *,
        on_instance: Callable[[ReceivedInstance], None],
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._on_instance = on_instance
        self._open: dict[int, _OpenAssociation] = {}
        self._lock = threading.Lock()
        self.counters = IngestCounters()

    def make_ae(self, ae_title: str) -> AE:
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.maximum_associations = MAX_ASSOCIATIONS
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def start(self, listener: Listener) -> ThreadedAssociationServer:
        ae = self.make_ae(listener.ae_title)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, self._on_conn_open, [ae]),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
        ]
        server = ae.start_server((listener.bind, listener.port), block=False, evt_handlers=handlers)
        assert server is not None  # non-blocking start always returns the server
        logger.info(
            "Store SCP %s listening on %s:%d", listener.ae_title, listener.bind, listener.port
        )
        return server

    # -- association events -------------------------------------------------------------

    def _on_conn_open(self, event: evt.Event, ae: AE) -> None:
        if not install_immediate_dispatch(event.assoc):
            logger.warning("pynetdicom internals changed: ingest falls back to its polling")
        # pynetdicom checks require_calling_aet when the association request arrives, which is
        # after this event, so the whitelist follows the device table without a restart.
        with unit_of_work(self._sessions) as session:
            restrict = get_site_config(session=session).restrict_sources
            allowed = calling_ae_whitelist(session=session)
        ae.require_calling_aet = allowed
        if restrict and not allowed:
            logger.warning("source restriction is on but no source device is configured")

    def _on_accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log = AssociationLog(
            direction="in",
            calling_ae=requestor.ae_title,
            called_ae=event.assoc.acceptor.ae_title,
            peer_host=str(requestor.address),
            started=datetime.now(UTC),
        )
        with self._lock:
            self._open[id(event.assoc)] = _OpenAssociation(log=log)
            self.counters.associations += 1

    def _on_closed(self, event: evt.Event, outcome: str) -> None:
        with self._lock:
            record = self._open.pop(id(event.assoc), None)
        if record is None:
            return
        log = record.log
        log.ended = datetime.now(UTC)
        log.instances = record.instances
        log.refused = record.refused
        parts = [outcome]
        if record.ignored:
            parts.append(f"{record.ignored} non-PET ignored")
        parts.extend(sorted(set(record.problems))[:3])
        log.outcome = "; ".join(parts)[:255]
        try:
            with unit_of_work(self._sessions) as session:
                session.add(log)
        except Exception:
            logger.exception("could not record the association log")

    # -- DIMSE handlers ------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return int(StoreStatus.SUCCESS)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        record = self._open.get(id(event.assoc))
        requestor = event.assoc.requestor
        request = cast(C_STORE, event.request)
        syntax = UID(event.context.transfer_syntax)
        try:
            received = self._receive(event, request, syntax, record)
        except DiskFull as exc:
            logger.error("refusing an instance: %s", exc)
            self._count(record, refused=True, problem="disk below floor")
            return _failure(StoreStatus.OUT_OF_RESOURCES, "petray: free disk below floor")
        except InvalidInstance as exc:
            logger.warning("refused an invalid instance from %s: %s", requestor.ae_title, exc)
            self._count(record, refused=True, problem=str(exc))
            return _failure(StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError) as exc:
            # pydicom decodes lazily, so a corrupt element surfaces only when it is touched.
            logger.warning("could not parse an instance from %s: %s", requestor.ae_title, exc)
            self._count(record, refused=True, problem="unparseable dataset")
            return _failure(StoreStatus.CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}")
        except Exception:
            logger.exception("failed to store an instance")
            self._count(record, refused=True, problem="processing failure")
            return _failure(StoreStatus.PROCESSING_FAILURE, "petray could not store the instance")
        if received is None:
            return int(StoreStatus.SUCCESS)
        self._count(record)
        self._on_instance(received)
        return int(StoreStatus.SUCCESS)

    def _receive(
        self,
        event: evt.Event,
        request: C_STORE,
        syntax: UID,
        record: _OpenAssociation | None,
    ) -> ReceivedInstance | None:
        """Store one instance durably; None when it is not PET and was ignored."""
        sop_class = str(request.AffectedSOPClassUID or "")
        dataset = cast(BytesIO, request.DataSet).getvalue()
        meta = encode_file_meta(sop_class, str(request.AffectedSOPInstanceUID or ""), syntax)
        parts = (PREAMBLE_AND_PREFIX, meta, dataset)
        # The file's fsync is the slowest step: start it now, while the header is checked. Only
        # for PET, so that the CT of a forwarded PET/CT study is not written just to be dropped.
        pending = self._store.begin(parts) if sop_class in ACCEPTED_SOP_CLASSES else None
        try:
            # Only the header is parsed: pixel data stay encoded as the sender sent them.
            ds, pixel_offset = read_header(dataset, syntax)
            if "SOPClassUID" not in ds:
                # is_pet falls back on the media storage SOP class, i.e. the one negotiated.
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
            if not is_pet(ds):
                self._count(record, ignored=True)
                logger.info(
                    "ignored a non-PET instance (SOP class %s) from %s",
                    event.context.abstract_syntax,
                    event.assoc.requestor.ae_title,
                )
                if pending is not None:
                    self._store.discard(pending)
                return None
            header = extract_instance_header(ds)
            check_pixel_data_complete(dataset, pixel_offset, syntax)
        except BaseException:
            if pending is not None:
                self._store.discard(pending)
            raise
        requestor = event.assoc.requestor
        return self._store.store(
            pending if pending is not None else parts,
            header,
            calling_ae=requestor.ae_title,
            peer_host=str(requestor.address),
        )

    def _count(
        self,
        record: _OpenAssociation | None,
        *,
        ignored: bool = False,
        refused: bool = False,
        problem: str = "",
    ) -> None:
        with self._lock:
            if ignored:
                self.counters.ignored += 1
            elif refused:
                self.counters.refused += 1
            else:
                self.counters.received += 1
                self.counters.last_received = datetime.now(UTC).isoformat()
            if record is not None:
                if ignored:
                    record.ignored += 1
                elif refused:
                    record.refused += 1
                    if problem:
                        record.problems.append(problem[:80])
                else:
                    record.instances += 1
