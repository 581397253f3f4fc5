"""Sending DICOM: C-STORE of files to one destination over one association, and C-ECHO.

Failures are classified here so callers only see the petray error hierarchy (issue 4):
refused/aborted/rejected associations, connection errors and timeouts are ``TransientError``
(retried with the caller's capped backoff); a C-STORE failure status, or a destination that
accepts none of the proposed presentation contexts, is ``DeliveryRefused`` (permanent).
Messages name the destination and counts only, never patient data.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from petray.errors import DeliveryRefused, PermanentError, TransientError

logger = logging.getLogger(__name__)

# PS3.8 9.3.2.2: a presentation context ID is an odd number 1-255, so at most 128 per association.
MAX_PRESENTATION_CONTEXTS = 128
MAX_MESSAGE_ID = 0xFFFF
# Uncompressed encodings pynetdicom can convert between without touching pixel data values,
# proposed together so a destination that only speaks Implicit VR still gets the series.
UNCOMPRESSED_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class DicomNode:
    """A remote application entity reached over TCP."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class SendReport:
    """What one ``send_instances`` call delivered."""

    node: DicomNode
    sent: int
    skipped: int
    # (SOP Instance UID, status meaning) for instances stored with a warning status.
    warnings: tuple[tuple[str, str], ...]
    elapsed_s: float


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


def _association_failure(node: DicomNode, assoc: Association) -> Exception:
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        reason = primitive.reason_str if primitive is not None else "no reason given"
        return TransientError(f"{node} rejected the association: {reason}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        # Negotiation finished and the destination said no to every SOP class/transfer syntax:
        # the same files will be refused again, so retrying cannot help.
        return DeliveryRefused(f"{node} accepts none of the proposed SOP classes/transfer syntaxes")
    if assoc.acceptor.primitive is None:
        # No A-ASSOCIATE response at all: nothing listening, unreachable, or no answer in time.
        return TransientError(f"cannot associate with {node}: connection refused or timed out")
    return TransientError(f"{node} aborted the association request")


@contextmanager
def open_association(
    node: DicomNode,
    *,
    calling_ae: str,
    contexts: Sequence[PresentationContext],
    timeout_s: float,
) -> Iterator[Association]:
    """An established association with ``TCP_NODELAY`` set, released (or aborted) at the end.

    Raises ``TransientError``/``DeliveryRefused`` when the association cannot be established.
    """
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
            evt_handlers=[(evt.EVT_CONN_OPEN, _disable_nagle)],
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


def send_instances(
    node: DicomNode,
    paths: Sequence[Path],
    *,
    calling_ae: str,
    skip_sop_uids: Collection[str] = (),
    on_sent: Callable[[str], None] | None = None,
    timeout_s: float = 30,
) -> SendReport:
    """C-STORE ``paths`` to ``node`` over one association, in the order given.

    Instances whose SOP Instance UID is in ``skip_sop_uids`` (already acknowledged in an
    earlier attempt) are not sent again. ``on_sent(sop_instance_uid)`` runs after each success
    or warning status, before the next instance, so the caller can record progress durably.
    Raises ``TransientError`` (retry later) or ``DeliveryRefused`` (permanent).
    """
    started = time.monotonic()
    outgoing, skipped = _plan(paths, skip_sop_uids)
    if not outgoing:
        return SendReport(node, sent=0, skipped=skipped, warnings=(), elapsed_s=0.0)

    sent = 0
    warnings: list[tuple[str, str]] = []
    contexts = presentation_contexts(outgoing)
    with open_association(
        node, calling_ae=calling_ae, contexts=contexts, timeout_s=timeout_s
    ) as assoc:
        refused = [item for item in outgoing if not _accepts(assoc, item)]
        if refused:
            first = refused[0]
            raise DeliveryRefused(
                f"{node} did not accept SOP class {first.sop_class_uid.name} in "
                f"{first.transfer_syntax_uid.name} ({len(refused)} instances)"
            )
        for item in outgoing:
            try:
                # Pixel data stays the bytes read from the file: pydicom decodes lazily and
                # pynetdicom only re-encodes the element framing when the TS differs.
                dataset = pydicom.dcmread(item.path)
            except (OSError, InvalidDicomError) as exc:
                raise PermanentError(f"cannot send {item.path.name}: unreadable file") from exc
            status = _store(assoc, dataset, node, sent, len(outgoing))
            code = int(status.Status)
            category = code_to_category(code)
            if category not in (STATUS_SUCCESS, STATUS_WARNING):
                raise DeliveryRefused(
                    f"{node} refused instance {sent + 1} of {len(outgoing)}: "
                    f"{_status_meaning(code)}"
                )
            if category == STATUS_WARNING:
                warnings.append((str(item.sop_instance_uid), _status_meaning(code)))
            sent += 1
            if on_sent is not None:
                on_sent(str(item.sop_instance_uid))

    elapsed = time.monotonic() - started
    logger.info(
        "sent %d instances to %s in %.2f s (%d skipped, %d warnings)",
        sent,
        node,
        elapsed,
        skipped,
        len(warnings),
    )
    return SendReport(node, sent=sent, skipped=skipped, warnings=tuple(warnings), elapsed_s=elapsed)


def _store(assoc: Association, dataset: Dataset, node: DicomNode, done: int, total: int) -> Dataset:
    def lost(what: str) -> TransientError:
        return TransientError(f"association with {node} {what} after {done} of {total} instances")

    started = time.monotonic()
    try:
        # Message ID is a US, unique among the requests of one association (PS3.7 9.3.1.1).
        status = assoc.send_c_store(dataset, msg_id=done % MAX_MESSAGE_ID + 1)
    except RuntimeError as exc:
        # pynetdicom raises when the peer has already dropped the association, e.g. Orthanc
        # refusing a store by aborting (ARCHITECTURE.md) between two requests.
        raise lost("was aborted") from exc
    # An empty status dataset means no response: aborted, DIMSE timeout or connection lost.
    if "Status" not in status:
        # pynetdicom aborts on a DIMSE timeout too, so only the clock tells the two apart.
        timeout = assoc.dimse_timeout
        if timeout is not None and time.monotonic() - started >= timeout:
            raise lost(f"got no C-STORE response within {timeout} s")
        raise lost("was aborted")
    return status


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
    except (TransientError, DeliveryRefused) as exc:
        return EchoResult(False, None, time.monotonic() - started, str(exc))
    latency = time.monotonic() - started
    if "Status" not in status:
        return EchoResult(False, None, latency, f"no C-ECHO response from {node}")
    code = int(status.Status)
    if code_to_category(code) != STATUS_SUCCESS:
        meaning = GENERAL_STATUS.get(code, ("", "unknown status"))[1]
        return EchoResult(False, code, latency, f"{node} answered C-ECHO with {meaning}")
    return EchoResult(True, code, latency, f"{node} answered C-ECHO in {latency * 1000:.0f} ms")
