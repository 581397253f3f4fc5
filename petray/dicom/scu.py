"""Sending DICOM: C-STORE of files to one destination over one association, and C-ECHO.

Failures are classified here so callers only see the petray error hierarchy (issue 4):
aborted or transiently rejected associations, connection errors and timeouts are
``TransientError`` (retried with the caller's capped backoff, within its budget); a C-STORE
failure status, a permanent association rejection (PS3.8 9.3.4), or a destination that accepts
none of the proposed presentation contexts, is ``DeliveryRefused`` (permanent).
Messages name the destination and counts only, never patient data.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from petray.dicom import direct_store
from petray.dicom.reactor import install_waiting_reactor
from petray.dicom.scp import DUL_IDLE_SLEEP_S
from petray.dicom.tls import TlsFiles, client_context
from petray.errors import ConfigurationError, DeliveryRefused, PermanentError, TransientError

logger = logging.getLogger(__name__)

# PS3.8 9.3.2.2: a presentation context ID is an odd number 1-255, so at most 128 per association.
MAX_PRESENTATION_CONTEXTS = 128
MAX_MESSAGE_ID = 0xFFFF
# Uncompressed encodings pynetdicom can convert between without touching pixel data values,
# proposed together so a destination that only speaks Implicit VR still gets the series.
UNCOMPRESSED_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# An extra association costs a negotiation and a release (a few ms) and, on the destination,
# often a process or thread: only worth it when it carries a real share of the series.
MIN_INSTANCES_PER_ASSOCIATION = 32
# PACS commonly limit simultaneous associations per calling AE; stay well below common limits.
MAX_ASSOCIATIONS = 8
# A-ASSOCIATE-RJ Result field (PS3.8 9.3.4): 1 rejected-permanent, 2 rejected-transient.
REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02


@dataclass(frozen=True)
class DicomNode:
    """A remote application entity reached over TCP."""

    ae_title: str
    host: str
    port: int
    # DICOM over TLS (PS3.15 B.1) when set: how to verify the node and, if it asks, who we are.
    tls: TlsFiles | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client context for this node, None without TLS; ConfigurationError for bad files."""
        return client_context(self.tls) if self.tls is not None else None


@dataclass(frozen=True)
class SendReport:
    """What one ``send_instances`` call delivered."""

    node: DicomNode
    sent: int
    skipped: int
    # (SOP Instance UID, status meaning) for instances stored with a warning status.
    warnings: tuple[tuple[str, str], ...]
    elapsed_s: float
    bytes_sent: int = 0


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    latency_s: float
    message: str


@dataclass(frozen=True)
class OutgoingInstance:
    """What planning an association needs to know about one file."""

    path: Path
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID

    @classmethod
    def from_file(cls, path: Path) -> OutgoingInstance:
        # Only the File Meta Information is read: planning the association must not cost a
        # full read of every file (the 645-slice series is ~250 MB).
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            return cls(
                path=path,
                sop_class_uid=UID(meta.MediaStorageSOPClassUID),
                sop_instance_uid=UID(meta.MediaStorageSOPInstanceUID),
                transfer_syntax_uid=UID(meta.TransferSyntaxUID),
            )
        except (OSError, InvalidDicomError, AttributeError) as exc:
            raise PermanentError(f"cannot send {path.name}: not a readable DICOM file") from exc


def _is_uncompressed_le(transfer_syntax: UID) -> bool:
    return transfer_syntax in UNCOMPRESSED_LITTLE_ENDIAN


def presentation_contexts(outgoing: Sequence[OutgoingInstance]) -> list[PresentationContext]:
    """One context per SOP class for uncompressed files, one per (SOP class, TS) otherwise.

    Compressed files are proposed only in their own transfer syntax because sending them any
    other way would mean decoding and re-encoding pixel data.
    """
    wanted: dict[tuple[UID, UID | None], None] = {}
    for item in outgoing:
        ts = None if _is_uncompressed_le(item.transfer_syntax_uid) else item.transfer_syntax_uid
        wanted.setdefault((item.sop_class_uid, ts), None)
    if len(wanted) > MAX_PRESENTATION_CONTEXTS:
        raise PermanentError(
            f"{len(wanted)} SOP class/transfer syntax pairs exceed the "
            f"{MAX_PRESENTATION_CONTEXTS} presentation contexts of one association"
        )
    return [
        build_context(sop_class, list(UNCOMPRESSED_LITTLE_ENDIAN) if ts is None else ts)
        for sop_class, ts in wanted
    ]


def _disable_nagle(event: evt.Event) -> None:
    # Nagle's algorithm delays each small PDU (command sets, responses) by up to ~40 ms on
    # Linux; over hundreds of instances that dominates the transfer time (ARCHITECTURE.md).
    # EVT_CONN_OPEN fires after connect() and before the A-ASSOCIATE-RQ is written.
    transport = event.assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def keep_responses_for_the_caller(assoc: Association) -> None:
    """Stop the association's reactor thread from taking our C-STORE/C-ECHO responses.

    pynetdicom's requestor reactor polls the DIMSE queue to serve requests *from* the peer and
    is paused during send_c_store by a flag handshake with a race: right after one response,
    the flag may still say "paused" while the reactor is waking up, so it can take the next
    response off the queue and drop it ("Received unexpected C-STORE-RSP"), and the send then
    waits a whole DIMSE timeout. Measured: about one 645-instance send in five to a fast
    storescp. A storage SCU's peer sends no requests on these associations, so the reactor
    thread never needs a DIMSE message: it gets none, the caller's thread gets them all.
    """
    dimse = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> tuple[int | None, Any]:
        if threading.current_thread() is assoc:
            return None, None
        return take(block=block)

    dimse.get_msg = get_msg  # type: ignore[method-assign,assignment]


def _on_connection_open(event: evt.Event) -> None:
    _disable_nagle(event)
    keep_responses_for_the_caller(event.assoc)
    # Each response waits for the reactor's next look at the socket: after 1 ms of sleep by
    # default, half of it on average per instance (as the Store SCP's reactor, petray.dicom.scp).
    if hasattr(event.assoc.dul, "_run_loop_delay"):
        event.assoc.dul._run_loop_delay = DUL_IDLE_SLEEP_S
    # Established, the reactor waits on its socket instead of waking every 0.1 ms, and reads
    # C-STORE responses without pynetdicom's decoding.
    direct_store.ResponseReader.install(event.assoc.dul)
    install_waiting_reactor(event.assoc)  # and its association's reactor waits too


def _unread_response(assoc: Association) -> A_ASSOCIATE | None:
    """The peer's A-ASSOCIATE response still queued for a requestor that never read it.

    pynetdicom's requestor checks that the connection is up only after sending its request; a
    peer that rejects at once and closes (DCMTK's storescp does) can have its A-ASSOCIATE-RJ
    read and its connection closed by then, and pynetdicom aborts without reading the
    rejection (about one association in twelve on loopback). The rejection is still in the
    DUL's queue to the user: read it rather than report an abort.
    """
    for item in list(assoc.dul.to_user_queue.queue):
        if isinstance(item, A_ASSOCIATE) and item.result is not None:
            return item
    return None


def _association_failure(node: DicomNode, assoc: Association) -> Exception:
    if not assoc.is_rejected and assoc.acceptor.primitive is None:
        late = _unread_response(assoc)
        if late is not None and late.result in (REJECTED_PERMANENT, REJECTED_TRANSIENT):
            assoc.acceptor.primitive = late
            assoc.is_rejected = True
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = primitive.reason_str if primitive is not None else "no reason given"
        if primitive is not None and primitive.result == REJECTED_PERMANENT:
            # The destination says asking again will not help (e.g. calling AE title not
            # recognised): a configuration problem for staff, not an outage to wait out.
            return DeliveryRefused(f"{node} rejected the association permanently: {reason}")
        return TransientError(f"{node} rejected the association: {reason}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # Negotiation finished and the destination said no to every SOP class/transfer syntax:
        # the same files will be refused again, so retrying cannot help.
        return DeliveryRefused(f"{node} accepts none of the proposed SOP classes/transfer syntaxes")
    if assoc.acceptor.primitive is None:
        # No A-ASSOCIATE response at all: nothing listening, unreachable, or no answer in time.
        # pynetdicom only logs why a TLS connection failed, so the message can only suggest it.
        tls = ", or the TLS handshake failed" if node.tls else ""
        return TransientError(f"cannot associate with {node}: connection refused or timed out{tls}")
    return TransientError(f"{node} aborted the association request")


@contextmanager
def open_association(
    node: DicomNode,
    *,
    calling_ae: str,
    contexts: Sequence[PresentationContext],
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Iterator[Association]:
    """An established association with ``TCP_NODELAY`` set, released (or aborted) at the end.

    Over TLS when ``node.tls`` is set (``ssl_context``, when given, is that node's context,
    built once for many associations). Raises ``TransientError``/``DeliveryRefused`` when the
    association cannot be established, ``ConfigurationError`` for unusable TLS files.
    """
    if ssl_context is None:
        ssl_context = node.ssl_context()
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    try:
        assoc = ae.associate(
            node.host,
            node.port,
            contexts=list(contexts),
            ae_title=node.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_connection_open)],
            tls_args=(ssl_context, node.host) if ssl_context is not None else None,
        )
    except OSError as exc:  # e.g. unresolvable host name
        raise TransientError(f"cannot associate with {node}: {exc.strerror or exc}") from exc
    if not assoc.is_established:
        raise _association_failure(node, assoc)
    try:
        yield assoc
    finally:
        # Released even when the caller stops early (refusal, on_sent failure): a release is
        # what tells the peer that everything it acknowledged is final.
        if assoc.is_established:
            assoc.release()
        reader = assoc.dul._is_transport_event
        if isinstance(reader, direct_store.ResponseReader):
            reader.close()


def _accepts(assoc: Association, item: OutgoingInstance) -> bool:
    for context in assoc.accepted_contexts:
        if context.abstract_syntax != item.sop_class_uid:
            continue
        accepted = UID(context.transfer_syntax[0])
        if accepted == item.transfer_syntax_uid or (
            _is_uncompressed_le(accepted) and _is_uncompressed_le(item.transfer_syntax_uid)
        ):
            return True
    return False


def _status_meaning(code: int) -> str:
    category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(
        code, GENERAL_STATUS.get(code, (code_to_category(code), "unknown status"))
    )
    return f"{category}: {meaning} (0x{code:04X})"


def _plan(
    paths: Sequence[Path], skip_sop_uids: Collection[str]
) -> tuple[list[OutgoingInstance], int]:
    skip = set(skip_sop_uids)
    outgoing: list[OutgoingInstance] = []
    skipped = 0
    for path in paths:
        item = OutgoingInstance.from_file(Path(path))
        if item.sop_instance_uid in skip:
            skipped += 1
            continue
        # A repeated SOP Instance UID would be a duplicate at the destination.
        skip.add(item.sop_instance_uid)
        outgoing.append(item)
    return outgoing, skipped


def _association_count(instances: int, wanted: int) -> int:
    """How many associations ``instances`` deserve: an extra one must carry enough to pay off."""
    by_work = -(-instances // MIN_INSTANCES_PER_ASSOCIATION)
    return max(1, min(wanted, by_work, MAX_ASSOCIATIONS))


class _Delivery:
    """One ``send_instances`` call: a queue of instances shared by its associations.

    Each association takes the next instance when its previous one is acknowledged, so a slow
    association never holds back work another one could do. ``on_sent`` runs under one lock
    (one call at a time, in acknowledgment order) so the caller's recording needs no locking.
    """

    def __init__(
        self,
        node: DicomNode,
        outgoing: list[OutgoingInstance],
        *,
        calling_ae: str,
        timeout_s: float,
        on_sent: Callable[[str], None] | None,
        associations: int,
    ) -> None:
        self.node = node
        self.total = len(outgoing)
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.contexts = presentation_contexts(outgoing)
        try:
            self.ssl_context = node.ssl_context()
        except ConfigurationError as exc:
            # Unusable certificate files will not heal by retrying: staff must fix the device.
            raise DeliveryRefused(f"{node}: {exc}") from None
        self.associations = associations
        self._pending = deque(outgoing)
        self._on_sent = on_sent
        self._queue_lock = threading.Lock()
        self._record_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.warnings: list[tuple[str, str]] = []
        # Raised after an association was up: they stop the whole delivery.
        self._errors: list[BaseException] = []
        # An extra association that could not be established is only worth reporting when
        # no other association delivered everything.
        self._setup_errors: list[BaseException] = []

    def run(self) -> None:
        # The first association runs in the caller's thread; the extra ones start only once it
        # is up, so a destination that is down costs one connection attempt, as before.
        try:
            self._association(first=True)
        finally:
            self._stop_and_join()
        self._raise_outcome()

    def _stop_and_join(self) -> None:
        if self._errors:
            self._stop.set()
        for thread in self._threads:
            thread.join()

    def _raise_outcome(self) -> None:
        if self._errors:
            raise _most_serious(self._errors)
        if self.sent < self.total:
            # Every association failed before sending: report why the first one did.
            raise (self._setup_errors or [TransientError(f"{self.node}: nothing delivered")])[0]

    def _start_extra(self) -> None:
        for index in range(1, self.associations):
            thread = threading.Thread(
                target=self._association,
                kwargs={"first": False},
                name=f"petray-scu-{index}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _next(self) -> OutgoingInstance | None:
        with self._queue_lock:
            if self._stop.is_set() or not self._pending:
                return None
            return self._pending.popleft()

    def _association(self, *, first: bool) -> None:
        established = False
        try:
            with open_association(
                self.node,
                calling_ae=self.calling_ae,
                contexts=self.contexts,
                timeout_s=self.timeout_s,
                ssl_context=self.ssl_context,
            ) as assoc:
                established = True
                self._check_accepted(assoc)
                if first:
                    self._start_extra()
                self._send_pending(assoc)
        except TransientError as exc:
            if first or established:
                self._fail(exc)
            else:
                # e.g. a destination serving one association at a time: the others carry on.
                logger.info("extra association to %s not established: %s", self.node, exc)
                self._setup_errors.append(exc)
        except BaseException as exc:  # re-raised by run(), in the caller's thread
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._queue_lock:
            self._errors.append(exc)
            self._stop.set()

    def _check_accepted(self, assoc: Association) -> None:
        with self._queue_lock:
            refused = [item for item in self._pending if not _accepts(assoc, item)]
        if refused:
            first = refused[0]
            raise DeliveryRefused(
                f"{self.node} did not accept SOP class {first.sop_class_uid.name} in "
                f"{first.transfer_syntax_uid.name} ({len(refused)} instances)"
            )

    def _send_pending(self, assoc: Association) -> None:
        msg_id = 0
        while (item := self._next()) is not None:
            msg_id = msg_id % MAX_MESSAGE_ID + 1
            status = _store(assoc, item, self.node, msg_id=msg_id, done=self.sent, total=self.total)
            code = int(status.Status)
            category = code_to_category(code)
            if category not in (STATUS_SUCCESS, STATUS_WARNING):
                raise DeliveryRefused(
                    f"{self.node} refused instance {self.sent + 1} of {self.total}: "
                    f"{_status_meaning(code)}"
                )
            # Recorded even while another association is failing: the destination has it, so
            # forgetting it would make the retry send a duplicate.
            with self._record_lock:
                self.sent += 1
                if category == STATUS_WARNING:
                    self.warnings.append((str(item.sop_instance_uid), _status_meaning(code)))
                if self._on_sent is not None:
                    self._on_sent(str(item.sop_instance_uid))


def _most_serious(errors: Sequence[BaseException]) -> BaseException:
    """The error the caller must see: its own interruptions, then refusals, then the rest."""

    def rank(exc: BaseException) -> int:
        if not isinstance(exc, Exception):
            return 0  # KeyboardInterrupt, SystemExit: never hidden behind a delivery error
        if isinstance(exc, PermanentError):
            return 1
        if isinstance(exc, TransientError):
            return 3
        return 2

    return min(errors, key=rank)


def send_instances(
    node: DicomNode,
    paths: Sequence[Path],
    *,
    calling_ae: str,
    skip_sop_uids: Collection[str] = (),
    on_sent: Callable[[str], None] | None = None,
    timeout_s: float = 30,
    associations: int = 1,
) -> SendReport:
    """C-STORE ``paths`` to ``node``, taking them in the order given.

    Up to ``associations`` associations share the work (fewer for small sends: see
    ``MIN_INSTANCES_PER_ASSOCIATION``); with one, instances arrive in order. Files whose transfer
    syntax the destination accepted as is are streamed from disk without being decoded.
    Instances whose SOP Instance UID is in ``skip_sop_uids`` (already acknowledged in an
    earlier attempt) are not sent again. ``on_sent(sop_instance_uid)`` runs after each success
    or warning status, one call at a time, before that association sends its next instance, so
    the caller can record progress durably (it may run in a worker thread).
    Raises ``TransientError`` (retry later) or ``DeliveryRefused`` (permanent).
    """
    if associations < 1:
        raise ValueError("associations must be at least 1")
    # Process-wide, but it only changes send_c_store called with a file path, which only
    # _payload does, and only for a file whose own transfer syntax was accepted.
    _config.STORE_SEND_CHUNKED_DATASET = True
    started = time.monotonic()
    outgoing, skipped = _plan(paths, skip_sop_uids)
    if not outgoing:
        return SendReport(node, sent=0, skipped=skipped, warnings=(), elapsed_s=0.0)

    delivery = _Delivery(
        node,
        outgoing,
        calling_ae=calling_ae,
        timeout_s=timeout_s,
        on_sent=on_sent,
        associations=_association_count(len(outgoing), associations),
    )
    delivery.run()
    elapsed = time.monotonic() - started
    logger.info(
        "sent %d instances to %s in %.2f s over %d association(s) (%d skipped, %d warnings)",
        delivery.sent,
        node,
        elapsed,
        delivery.associations,
        skipped,
        len(delivery.warnings),
    )
    return SendReport(
        node,
        sent=delivery.sent,
        skipped=skipped,
        warnings=tuple(delivery.warnings),
        elapsed_s=elapsed,
        # Every planned file was acknowledged (any failure raised above).
        bytes_sent=sum(item.path.stat().st_size for item in outgoing),
    )


def _own_syntax_context(assoc: Association, item: OutgoingInstance) -> int | None:
    """The accepted context in exactly the file's SOP class and transfer syntax, if any."""
    for context in assoc.accepted_contexts:
        if (
            context.abstract_syntax == item.sop_class_uid
            and UID(context.transfer_syntax[0]) == item.transfer_syntax_uid
        ):
            return context.context_id
    return None


def _payload(assoc: Association, item: OutgoingInstance) -> Path | Dataset:
    """The file itself when the accepted transfer syntax is the file's own, else a dataset.

    pynetdicom streams a path's bytes after the File Meta Information without decoding them
    (``STORE_SEND_CHUNKED_DATASET``), which needs an accepted context in exactly the file's
    transfer syntax; a destination that chose the other uncompressed syntax gets the dataset
    decoded and re-encoded by pynetdicom, as before.
    """
    if _own_syntax_context(assoc, item) is not None:
        return item.path
    try:
        return pydicom.dcmread(item.path)
    except (OSError, InvalidDicomError) as exc:
        raise PermanentError(f"cannot send {item.path.name}: unreadable file") from exc


def _store(
    assoc: Association,
    item: OutgoingInstance,
    node: DicomNode,
    *,
    msg_id: int,
    done: int,
    total: int,
) -> Dataset:
    def lost(what: str) -> TransientError:
        return TransientError(f"association with {node} {what} after {done} of {total} instances")

    context_id = _own_syntax_context(assoc, item)
    started = time.monotonic()
    try:
        # Message ID is a US, unique among the requests of one association (PS3.7 9.3.1.1).
        if context_id is not None and direct_store.usable(assoc):
            status = _send_direct(assoc, item, context_id=context_id, msg_id=msg_id)
        else:
            status = assoc.send_c_store(_payload(assoc, item), msg_id=msg_id)
    except ConnectionError as exc:
        raise lost("was lost while sending") from exc
    except RuntimeError as exc:
        # pynetdicom raises when the peer has already dropped the association, e.g. Orthanc
        # refusing a store by aborting (ARCHITECTURE.md) between two requests.
        raise lost("was aborted") from exc
    except (OSError, AttributeError, ValueError) as exc:
        # The file changed or vanished since it was planned (AttributeError: its file meta
        # lost a required element; ValueError: its transfer syntax is no longer the planned one).
        raise PermanentError(f"cannot send {item.path.name}: unreadable file") from exc
    # An empty status dataset means no response: aborted, DIMSE timeout or connection lost.
    if "Status" not in status:
        # pynetdicom aborts on a DIMSE timeout too, so only the clock tells the two apart.
        timeout = assoc.dimse_timeout
        if timeout is not None and time.monotonic() - started >= timeout:
            raise lost(f"got no C-STORE response within {timeout} s")
        raise lost("was aborted")
    return status


def _send_direct(
    assoc: Association, item: OutgoingInstance, *, context_id: int, msg_id: int
) -> Dataset:
    """The file's data set as it is on disk, written straight to the socket (direct_store)."""
    if not assoc.is_established:
        raise RuntimeError("the association is no longer established")
    _meta, offset = split_dataset(item.path)
    return direct_store.send_c_store(
        assoc,
        item.path,
        offset,
        context_id=context_id,
        msg_id=msg_id,
        sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid,
    )


def echo(node: DicomNode, *, calling_ae: str, timeout_s: float = 10) -> EchoResult:
    """C-ECHO ``node``; never raises for network trouble, the result says what happened."""
    started = time.monotonic()
    try:
        with open_association(
            node,
            calling_ae=calling_ae,
            contexts=[build_context(Verification)],
            timeout_s=timeout_s,
        ) as assoc:
            status = assoc.send_c_echo()
    except (TransientError, DeliveryRefused, ConfigurationError) as exc:
        return EchoResult(False, None, time.monotonic() - started, str(exc))
    latency = time.monotonic() - started
    if "Status" not in status:
        return EchoResult(False, None, latency, f"no C-ECHO response from {node}")
    code = int(status.Status)
    if code_to_category(code) != STATUS_SUCCESS:
        meaning = GENERAL_STATUS.get(code, ("", "unknown status"))[1]
        return EchoResult(False, code, latency, f"{node} answered C-ECHO with {meaning}")
    return EchoResult(True, code, latency, f"{node} answered C-ECHO in {latency * 1000:.0f} ms")
