"""The Store SCP: accepts PET instances over DICOM and stores them durably before answering.

Dependencies reach the handlers through pynetdicom's handler binding (no globals). The SCP stores
only PET; other storage SOP classes are accepted at association level so that a PACS forwarding
a whole PET/CT study is not made to retry forever, but their instances are dropped and counted.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from io import BytesIO
from typing import Any, NamedTuple, cast

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
from petray.dicom.direct_receive import StoreRequest, install_direct_receive
from petray.dicom.header import (
    ACCEPTED_SOP_CLASSES,
    DEFAULT_MAX_DIMENSION,
    InstanceHeader,
    extract_instance_header,
    is_pet,
)
from petray.dicom.ingest import DiskFull, InstanceStore, ReceivedInstance
from petray.dicom.reactor import install_waiting_reactor
from petray.dicom.status import StoreStatus
from petray.errors import InvalidInstance, PermanentError
from petray.imaging.volume import StoredSlice, stored_slice
from petray.settings import Settings
from petray.site.audit import record_association
from petray.site.siteconfig import NO_SOURCE_DEVICE, Listener, get_site_config, list_devices

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
DEFAULT_MAX_INSTANCE_BYTES = 64 * 2**20
LISTEN_BACKLOG = 128
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


class RejectDiagnostic(IntEnum):
    """A-ASSOCIATE-RJ reasons from the DICOM UL service-user, rejected permanent (PS3.8 9.3.4)."""

    CALLING_AE_NOT_RECOGNISED = 0x03
    CALLED_AE_NOT_RECOGNISED = 0x07


REJECTED_PERMANENT = 0x01
REJECT_SOURCE_SERVICE_USER = 0x01


class OversizedInstance(InvalidInstance):
    """An instance larger than any real PET image: refused before it costs more memory."""


class UnreadableInstance(PermanentError):
    """A dataset that cannot be parsed at all: answered "cannot understand" (0xC000)."""


# What pydicom raises on hostile bytes, depending on where they break it (found by fuzzing,
# issue 9: an unknown VR in Specific Character Set raised NotImplementedError, a 0x0110).
PARSE_ERRORS = (
    InvalidDicomError,
    ValueError,
    EOFError,
    KeyError,
    TypeError,
    IndexError,
    NotImplementedError,
    OverflowError,
    struct.error,
)


@dataclass(frozen=True)
class IngestLimits:
    """What one listener accepts (issue 9) and how long a silent peer may hold a slot (issue 8).

    Memory held at most is about ``max_associations`` x ``max_instance_bytes`` (each association
    holds the instance it is receiving, and a deflated one is inflated within the same bound).
    """

    max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
    max_image_dimension: int = DEFAULT_MAX_DIMENSION
    max_associations: int = MAX_ASSOCIATIONS
    # pynetdicom waits 30 s for the A-ASSOCIATE-RQ by default, holding a slot for a port probe.
    acse_timeout_s: float = 5.0
    network_timeout_s: float = 60.0
    check_called_ae: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, processes: int = 1) -> IngestLimits:
        """One process's share when ``processes`` listeners share the port."""
        return cls(
            max_instance_bytes=settings.max_instance_bytes,
            max_image_dimension=settings.max_image_dimension,
            max_associations=max(1, -(-settings.dicom_max_associations // processes)),
            acse_timeout_s=settings.dicom_acse_timeout_s,
            network_timeout_s=settings.dicom_network_timeout_s,
            check_called_ae=settings.dicom_check_called_ae,
        )


class _SharedPortServer(ThreadedAssociationServer):
    """A listener that shares its port with the other Store SCP processes: the kernel hands
    each new connection to one of them (Linux SO_REUSEPORT)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


@dataclass
class IngestCounters:
    received: int = 0
    ignored: int = 0
    refused: int = 0
    associations: int = 0
    rejected: int = 0
    last_received: str = ""


@dataclass
class _OpenAssociation:
    log: AssociationLog
    instances: int = 0
    refused: int = 0
    ignored: int = 0
    problems: list[str] = field(default_factory=list)


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = int(status)
    # ErrorComment is LO: 64 characters at most (PS3.7 C.4.2.1.4).
    ds.ErrorComment = comment[:64]
    return ds


def check_pixel_data_complete(
    encoded: bytes | memoryview, offset: int, syntax: UID, header: InstanceHeader | None = None
) -> None:
    """Raise EOFError when the PixelData element at ``offset`` is cut short.

    The header is parsed with ``stop_before_pixels``, so a dataset truncated inside its pixel
    data would otherwise be stored and acknowledged, and fail only much later in the packer.
    Only element headers are read (the lengths of the value and of each fragment), never the
    pixel values. ``encoded`` is the inflated dataset for a deflated transfer syntax.

    With ``header``, native PixelData must also have the length its Rows, Columns,
    BitsAllocated and NumberOfFrames imply (PS3.5 8.1.1, padded to even length): otherwise
    InvalidInstance, so that a lying header is refused here and not found at packing.
    """
    if syntax == DeflatedExplicitVRLittleEndian:
        syntax = ExplicitVRLittleEndian  # once inflated, it is explicit VR little endian
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
        if header is not None:
            _check_native_length(length, header, syntax)
        return
    if header is not None and not syntax.is_encapsulated:
        raise InvalidInstance("PixelData has undefined length in a native transfer syntax")
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


def _stored_slice(
    ds: Dataset,
    header: InstanceHeader,
    dataset: bytes | memoryview,
    syntax: UID,
    pixel_offset: int,
    meta_length: int,
) -> StoredSlice | None:
    """Where the file about to be written holds this slice's native pixel values, with what
    the Compilator needs to put them in its volume without parsing the file (issue 13)."""
    if syntax.is_implicit_VR:
        value_at = pixel_offset + 8
    elif syntax == ExplicitVRLittleEndian:
        value_at = pixel_offset + 12
    else:
        return None  # deflated (the offset is into the inflated bytes), big endian, encapsulated
    if pixel_offset + 8 > len(dataset):
        return None
    if struct.unpack_from("<HH", dataset, pixel_offset) != PIXEL_DATA_TAG:
        return None
    return stored_slice(ds, syntax, len(PREAMBLE_AND_PREFIX) + meta_length + value_at, known=header)


def _check_native_length(length: int, header: InstanceHeader, syntax: UID) -> None:
    if syntax.is_encapsulated:
        # PS3.5 A.4: encapsulated pixel data always has undefined length.
        raise InvalidInstance("PixelData has a defined length in an encapsulated transfer syntax")
    expected = header.pixel_data_bytes
    if length not in (expected, expected + expected % 2):
        raise InvalidInstance(
            f"PixelData is {length} bytes, Rows x Columns x BitsAllocated x frames "
            f"need {expected} (PS3.5 8.1.1)"
        )


def inflate(deflated: bytes | memoryview, max_bytes: int) -> bytes:
    """The inflated dataset of Deflated Explicit VR Little Endian (PS3.5 A.5), at most
    ``max_bytes``: a deflate stream expands up to ~1000:1, so an unbounded inflate lets 1.6 MB
    on the wire take 1.6 GB of memory (issue 9). Raises OversizedInstance beyond the bound and
    EOFError for a corrupt or cut stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(deflated, max_bytes + 1)
    except zlib.error as exc:
        raise EOFError(f"deflated dataset is corrupt: {exc}") from None
    if len(inflated) > max_bytes:
        raise OversizedInstance(
            f"deflated dataset inflates beyond the limit of {max_bytes // 2**20} MiB"
        )
    if not inflater.eof:
        raise EOFError("deflated dataset is truncated")
    return inflated


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


def read_header(
    dataset: bytes | memoryview, syntax: UID, *, max_bytes: int = DEFAULT_MAX_INSTANCE_BYTES
) -> tuple[Dataset, int]:
    """The dataset's elements before its pixel data, and the offset where the pixel data start.

    ``dataset`` is the encoded C-STORE dataset, without file meta: parsing it directly instead of
    a whole file built around it skips encoding and re-reading the file meta on the hot path.
    For a deflated dataset the offset is into the inflated bytes (see ``inflate``).
    """
    try:
        if syntax == DeflatedExplicitVRLittleEndian:
            dataset = inflate(dataset, max_bytes)
        fp = BytesIO(dataset)
        ds = read_dataset(
            fp, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_at_pixel_data
        )
    except PARSE_ERRORS as exc:
        raise UnreadableInstance(str(exc) or type(exc).__name__) from None
    except RecursionError:
        # pydicom reads a sequence by recursion: ~200 nested levels exhaust the stack.
        raise UnreadableInstance("sequences nested too deep") from None
    return ds, fp.tell()


def resolve_host(host: str) -> frozenset[str]:
    """The addresses a device's host (a name or an address) stands for; empty if unresolvable."""
    try:
        infos = socket.getaddrinfo(host.strip(), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(_normalised_address(str(info[4][0])) for info in infos)


def _normalised_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)  # ::ffff:127.0.0.1 is 127.0.0.1
    return str(ip)


class SourceDevice(NamedTuple):
    """What the whitelist needs of a source device."""

    ae_title: str
    host: str
    match_ae_only: bool = False


def source_refusal(
    calling_ae: str,
    peer_address: str,
    sources: Sequence[tuple[str, str] | SourceDevice],
    *,
    resolve: Callable[[str], frozenset[str]] = resolve_host,
) -> str:
    """Why a sender is refused when only configured sources may store; "" when it may.

    ``sources`` are the source devices' (AE title, host[, match AE title only]). Fails closed:
    with no source device nobody may store (issue 9: the whitelist used to fail open). A known
    AE title must also call from its device's host, resolved, since an AE title is only a name
    anyone can send, unless that device is set to match on its AE title alone.
    """
    if not sources:
        return NO_SOURCE_DEVICE
    matches = [SourceDevice(*s) for s in sources if s[0].strip() == calling_ae]
    if not matches:
        return f"calling AE title {calling_ae!r} is not a configured source"
    if any(device.match_ae_only for device in matches):
        return ""
    peer = _normalised_address(peer_address)
    if any(peer in resolve(device.host) for device in matches):
        return ""
    return f"calling AE title {calling_ae!r} called from {peer}, not from its device's host"


def check_identity(ds: Dataset, sop_class: str, sop_instance: str) -> None:
    """The dataset must be what the C-STORE request says it is (PS3.4 B.2.3, PS3.7 9.1.1.1).

    A PET dataset sent under the CT Image Storage context would otherwise be stored with CT in
    its file meta and PET in its dataset (issue 9). Refused with 0xA900 via InvalidInstance.
    """
    try:
        in_dataset = {
            "SOPClassUID": str(ds.get("SOPClassUID") or "").rstrip("\x00 "),
            "SOPInstanceUID": str(ds.get("SOPInstanceUID") or "").rstrip("\x00 "),
        }
    except Exception:  # pydicom decodes lazily; the header check names the broken element
        return
    if in_dataset["SOPClassUID"] and in_dataset["SOPClassUID"] != sop_class:
        raise InvalidInstance("SOP Class UID differs from the negotiated SOP class")
    if in_dataset["SOPInstanceUID"] and in_dataset["SOPInstanceUID"] != sop_instance:
        raise InvalidInstance("SOP Instance UID differs from Affected SOP Instance UID")


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
        if message is None:
            return  # pynetdicom's wake-up for its reactor when the association ends (AA-2)
        self._serve(message, context_id)


def install_size_guard(assoc: Association, max_bytes: int) -> bool:
    """Abort an association whose current message grows beyond ``max_bytes``; True if done.

    pynetdicom gathers a C-STORE's P-DATA fragments in memory until the last one arrives, with
    no bound of its own, so a sender could fill the memory with one endless dataset. Checked
    after each fragment, in the DUL thread; Evt19 (invalid PDU) makes pynetdicom send an
    A-ABORT and end the association (PS3.8 9.2). Relies on ``dimse.message.data_set``.
    """
    dimse, dul = assoc.dimse, assoc.dul
    receive = getattr(dimse, "receive_primitive", None)
    if not callable(receive) or not hasattr(dimse, "message"):
        return False

    def guarded(primitive: Any) -> None:
        receive(primitive)
        message = dimse.message
        data_set = getattr(message, "data_set", None)
        if isinstance(data_set, BytesIO) and data_set.tell() > max_bytes:
            logger.warning(
                "aborting an association from %s: instance beyond %d MiB",
                assoc.requestor.ae_title,
                max_bytes // 2**20,
            )
            dimse.message = None  # frees what was gathered so far
            dul.event_queue.put("Evt19")

    dimse.receive_primitive = guarded  # type: ignore[method-assign]
    return True


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


class _HandshakeInAssociation:
    """An SSL context whose server sockets finish their handshake in their association's thread.

    pynetdicom wraps each accepted socket in the server's one accept thread, and a blocking
    wrap completes the handshake there: a peer that connects and sends nothing (a port probe)
    would stop every other sender from connecting for as long as it stays. Deferred, the
    handshake happens in the first read of that association's own DUL thread, bounded by
    its network timeout (issue 8: probes must not lock senders out).
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        return self._context.wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=False
        )


class StoreService:
    """C-STORE and C-ECHO handlers plus association bookkeeping for one listener."""

    def __init__(
        self,
        store: InstanceStore,
        sessions: sessionmaker[Session],
        *,
        on_instance: Callable[[ReceivedInstance], None],
        limits: IngestLimits | None = None,
    ) -> None:
        self._limits = limits or IngestLimits()
        self._store = store
        self._sessions = sessions
        self._on_instance = on_instance
        self._open: dict[int, _OpenAssociation] = {}
        self._lock = threading.Lock()
        self.counters = IngestCounters()

    @property
    def open_associations(self) -> int:
        with self._lock:
            return len(self._open)

    def make_ae(self, ae_title: str) -> AE:
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.maximum_associations = self._limits.max_associations
        # The ACSE timeout bounds both the wait for the A-ASSOCIATE-RQ and the ARTIM timer
        # (PS3.8 9.1.5): a connection that never asks for an association frees its slot then.
        ae.acse_timeout = self._limits.acse_timeout_s
        ae.network_timeout = self._limits.network_timeout_s
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    def start(
        self,
        listener: Listener,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> ThreadedAssociationServer:
        """Listen on ``listener``; over TLS (PS3.15 B.1) when ``ssl_context`` is given; beside
        other processes listening on the same port when ``reuse_port`` (SO_REUSEPORT)."""
        ae = self.make_ae(listener.ae_title)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
        ]
        # ae.start_server(block=False), with a server class that may share the port.
        server = ae.make_server(
            (listener.bind, listener.port),
            evt_handlers=handlers,
            ssl_context=cast(ssl.SSLContext, _HandshakeInAssociation(ssl_context))
            if ssl_context is not None
            else None,
            server_class=_SharedPortServer if reuse_port else ThreadedAssociationServer,
        )
        acceptor = threading.Thread(
            target=server.serve_forever, name=f"petray-acceptor-{listener.port}", daemon=True
        )
        acceptor.start()
        ae._servers.append(server)
        # socketserver listens with a backlog of 5: a burst of connections (senders starting
        # together, or a port scan) would have its SYNs dropped and retried a second later.
        if server.socket is not None:
            server.socket.listen(LISTEN_BACKLOG)
        logger.info(
            "Store SCP %s listening on %s:%d%s",
            listener.ae_title,
            listener.bind,
            listener.port,
            " (TLS)" if ssl_context is not None else "",
        )
        return server

    # -- association events -------------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        if not install_immediate_dispatch(event.assoc):
            logger.warning("pynetdicom internals changed: ingest falls back to its polling")
        if not install_direct_receive(
            event.assoc, self.store_request, max_bytes=self._limits.max_instance_bytes
        ):
            logger.warning("pynetdicom internals changed: requests are read by its reactor")
        if not install_size_guard(event.assoc, self._limits.max_instance_bytes):
            logger.warning("pynetdicom internals changed: received instances are not bounded")
        if not install_waiting_reactor(event.assoc):
            logger.warning("pynetdicom changed: each association's reactor polls every 1 ms")

    def _on_conn_close(self, event: evt.Event) -> None:
        # A peer that closes before its A-ASSOCIATE-RQ (a port probe) leaves pynetdicom's
        # acceptor thread waiting the whole ACSE timeout for a request that cannot come, and
        # that thread counts against maximum_associations (issue 8: 40 probes locked senders
        # out for 10-35 s). An empty item ends that wait now, as the timeout itself would.
        assoc = event.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None:
            # pynetdicom types the queue for PDUs only; None is what its own timeout puts.
            cast(Any, assoc.dul.to_user_queue).put(None)

    def _on_requested(self, event: evt.Event) -> None:
        """Accept or reject the A-ASSOCIATE-RQ by called AE title and source devices.

        Read from the database for every request, so it follows the device table without a
        restart; a bare connection costs no query.
        """
        assoc = event.assoc
        request = assoc.requestor.primitive
        if request is None:
            return
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        ours = assoc.ae.ae_title.strip()
        if self._limits.check_called_ae and called != ours:
            self._reject(
                assoc,
                RejectDiagnostic.CALLED_AE_NOT_RECOGNISED,
                f"called AE title {called!r} is not {ours!r}",
            )
            return
        with unit_of_work(self._sessions) as session:
            if not get_site_config(session=session).restrict_sources:
                return
            sources = [
                SourceDevice(d.ae_title, d.host, d.match_ae_only)
                for d in list_devices(session=session)
                if d.is_source
            ]
        reason = source_refusal(calling, str(assoc.requestor.address), sources)
        if reason:
            self._reject(assoc, RejectDiagnostic.CALLING_AE_NOT_RECOGNISED, reason)

    def _reject(self, assoc: Association, diagnostic: RejectDiagnostic, reason: str) -> None:
        logger.warning("rejected an association from %s: %s", assoc.requestor.address, reason)
        with self._lock:
            self.counters.rejected += 1
        now = datetime.now(UTC)
        # Before acceptance the calling AE title is only in the request (the audit needs it).
        request = assoc.requestor.primitive
        log = AssociationLog(
            direction="in",
            calling_ae=str(request.calling_ae_title).strip() if request else "",
            called_ae=assoc.acceptor.ae_title,
            peer_host=str(assoc.requestor.address),
            started=now,
            ended=now,
            outcome=f"rejected: {reason}"[:255],
        )
        try:
            with unit_of_work(self._sessions) as session:
                record_association(log, session=session)
        except Exception:
            logger.exception("could not record the association log")
        # Recorded before the answer, so a sender told "rejected" finds why in the activity log.
        # As pynetdicom rejects by itself: answer A-ASSOCIATE-RJ, then end the association.
        assoc.acse.send_reject(REJECTED_PERMANENT, REJECT_SOURCE_SERVICE_USER, int(diagnostic))
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

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
        if record.refused:
            # Issue 9: the activity log counts every refusal as well as naming why.
            parts.append(f"{record.refused} refused")
        parts.extend(sorted(set(record.problems))[:3])
        log.outcome = "; ".join(parts)[:255]
        try:
            with unit_of_work(self._sessions) as session:
                record_association(log, session=session)
        except Exception:
            logger.exception("could not record the association log")

    # -- DIMSE handlers ------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return int(StoreStatus.SUCCESS)

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """The C-STORE handler of an association on pynetdicom's path (TLS, or handed back)."""
        request = cast(C_STORE, event.request)
        status, comment = self.store_request(
            event.assoc,
            StoreRequest(
                abstract_syntax=str(event.context.abstract_syntax),
                transfer_syntax=str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                data_set=memoryview(cast(BytesIO, request.DataSet).getvalue()),
            ),
        )
        return _failure(status, comment) if comment else int(status)

    def store_request(self, assoc: Association, request: StoreRequest) -> tuple[int, str]:
        """Store one C-STORE request durably: its status, and an error comment on failure."""
        record = self._open.get(id(assoc))
        requestor = assoc.requestor
        try:
            received = self._receive(assoc, request, record)
        except DiskFull as exc:
            logger.error("refusing an instance: %s", exc)
            self._count(record, refused=True, problem="disk below floor")
            return StoreStatus.OUT_OF_RESOURCES, "petray: free disk below floor"
        except OversizedInstance as exc:
            # Not "out of resources" (A700): a sender would retry the same bomb for ever.
            logger.warning("refused an oversized instance from %s: %s", requestor.ae_title, exc)
            self._count(record, refused=True, problem=str(exc))
            return StoreStatus.CANNOT_UNDERSTAND, str(exc)
        except InvalidInstance as exc:
            logger.warning("refused an invalid instance from %s: %s", requestor.ae_title, exc)
            self._count(record, refused=True, problem=str(exc))
            return StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc)
        except (
            UnreadableInstance,
            InvalidDicomError,
            ValueError,
            EOFError,
            KeyError,
            TypeError,
        ) as exc:
            # pydicom decodes lazily, so a corrupt element surfaces only when it is touched.
            logger.warning("could not parse an instance from %s: %s", requestor.ae_title, exc)
            self._count(record, refused=True, problem="unparseable dataset")
            return StoreStatus.CANNOT_UNDERSTAND, f"cannot parse dataset: {exc}"
        except Exception:
            logger.exception("failed to store an instance")
            self._count(record, refused=True, problem="processing failure")
            return StoreStatus.PROCESSING_FAILURE, "petray could not store the instance"
        if received is None:
            return StoreStatus.SUCCESS, ""
        self._count(record)
        self._on_instance(received)
        return StoreStatus.SUCCESS, ""

    def _receive(
        self, assoc: Association, request: StoreRequest, record: _OpenAssociation | None
    ) -> ReceivedInstance | None:
        """Store one instance durably; None when it is not PET and was ignored."""
        sop_class, sop_instance = request.sop_class_uid, request.sop_instance_uid
        syntax = UID(request.transfer_syntax)
        if sop_class != request.abstract_syntax:
            raise InvalidInstance("Affected SOP Class UID differs from the presentation context")
        dataset = request.data_set
        limits = self._limits
        if len(dataset) > limits.max_instance_bytes:  # when pynetdicom's guard is not installed
            raise OversizedInstance(
                f"dataset is larger than the limit of {limits.max_instance_bytes // 2**20} MiB"
            )
        meta = encode_file_meta(sop_class, sop_instance, syntax)
        parts = (PREAMBLE_AND_PREFIX, meta, dataset)
        # The file's fsync is the slowest step: start it now, while the header is checked. Only
        # for PET, so that the CT of a forwarded PET/CT study is not written just to be dropped.
        pending = self._store.begin(parts) if sop_class in ACCEPTED_SOP_CLASSES else None
        try:
            # Only the header is parsed: pixel data stay encoded as the sender sent them. A
            # deflated dataset is inflated (bounded) once, for the header and the pixel check.
            plain: bytes | memoryview = dataset
            plain_syntax = syntax
            if syntax == DeflatedExplicitVRLittleEndian:
                plain = inflate(dataset, limits.max_instance_bytes)
                plain_syntax = ExplicitVRLittleEndian
            ds, pixel_offset = read_header(plain, plain_syntax)
            check_identity(ds, sop_class, sop_instance)
            if "SOPClassUID" not in ds:
                # is_pet falls back on the media storage SOP class, i.e. the one negotiated.
                ds.file_meta = FileMetaDataset()
                ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
            if not is_pet(ds):
                self._count(record, ignored=True)
                logger.info(
                    "ignored a non-PET instance (SOP class %s) from %s",
                    request.abstract_syntax,
                    assoc.requestor.ae_title,
                )
                if pending is not None:
                    self._store.discard(pending)
                return None
            header = extract_instance_header(ds, max_dimension=limits.max_image_dimension)
            if header.pixel_data_bytes > limits.max_instance_bytes:
                # Also bounds encapsulated images, whose decoded size no length shows.
                raise OversizedInstance(
                    f"Rows x Columns x BitsAllocated x frames exceed "
                    f"{limits.max_instance_bytes // 2**20} MiB"
                )
            check_pixel_data_complete(plain, pixel_offset, plain_syntax, header)
        except BaseException:
            if pending is not None:
                self._store.discard(pending)
            raise
        requestor = assoc.requestor
        return self._store.store(
            pending if pending is not None else parts,
            header,
            calling_ae=requestor.ae_title,
            peer_host=str(requestor.address),
            stored=_stored_slice(ds, header, dataset, syntax, pixel_offset, len(meta)),
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
