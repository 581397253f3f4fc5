"""C-STORE and C-ECHO requests read straight from an accepted association's socket (issue 13).

pynetdicom receives a PDU by polling its socket every ``_run_loop_delay``, reading it 4 KiB at a
time, decoding it into objects, and passing it through its state machine, its DIMSE assembler
and an event before a handler sees the data set; the answer goes back the same way. For a
scanner streaming slices that costs about as much CPU as storing them. Once an association is
established on plain TCP, ``DirectReceiver`` takes the place of the DUL reactor's read step: it
waits on the socket, reads each P-DATA-TF PDU whole, gathers a request's fragments, and when a
C-STORE or C-ECHO request is complete calls the service and writes the answer to the socket.

Anything else is handed back: a PDU that is not P-DATA-TF (release, abort), a request other than
C-STORE or C-ECHO, a context or fragment order it does not expect, a PDU that holds more than
the end of one request. The PDUs of the request being gathered and the one at hand go to
pynetdicom's reactor as if it had read them itself, and the association stays on pynetdicom's
path from then on, which serves or refuses them exactly as before. Nothing of a request is acted
on before its last fragment, so nothing is done twice. A request larger than ``max_bytes``
aborts the association as pynetdicom's size guard does (petray.dicom.scp). Never over TLS: the
reactor's own read step stays, as for an association that is not established yet.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.association import Association

from petray.dicom.wire import (
    C_ECHO_RQ,
    C_STORE_RQ,
    IS_COMMAND,
    IS_LAST,
    P_DATA_TF,
    PDU_HEADER,
    PDV_HEADER,
    Command,
    MalformedCommand,
    parse_command,
    pdus,
    response_command,
)

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# How long one read step waits for a PDU before the reactor looks at its own queue again (an
# abort or release to send): the latency of those, not of the data.
POLL_S = 0.05
ESTABLISHED = "Sta6"  # PS3.8 9.2: association established, ready for data transfer
# Invalid or unrecognised PDU (PS3.8 9.2.1): pynetdicom answers with an A-ABORT.
EVT_INVALID_PDU = "Evt19"
EVT_TRANSPORT_CLOSED = "Evt17"


@dataclass(frozen=True)
class StoreRequest:
    """A complete C-STORE request as the service needs it."""

    abstract_syntax: str
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    data_set: memoryview


# The service: (status, error comment) for a stored (or refused) instance.
StoreHandler = Callable[[Association, StoreRequest], tuple[int, str]]


class _HandBack(Exception):
    """The PDUs gathered so far go to pynetdicom's reactor."""


class DirectReceiver:
    """The read step of one association's DUL reactor (see the module's docstring)."""

    def __init__(self, assoc: Association, store: StoreHandler, *, max_bytes: int) -> None:
        self._assoc = assoc
        self._dul = assoc.dul
        self._pynetdicom_step = assoc.dul._is_transport_event
        self._store = store
        self._max_bytes = max_bytes
        self.active = True
        self.served = 0
        self._contexts: dict[int, tuple[str, str]] | None = None
        self._pending: list[bytearray] = []  # raw PDUs of the request being gathered
        self._gathered = 0
        self._command: list[memoryview] = []
        self._request: Command | None = None
        self._context_id = 0
        self._data: list[memoryview] = []

    def __call__(self) -> bool:
        """One read step: True when something arrived (the reactor restarts its idle timer)."""
        dul = self._dul
        transport = dul.socket
        sock = transport.socket if transport is not None else None
        if (
            not self.active
            or type(sock) is not socket.socket
            or dul.state_machine.current_state != ESTABLISHED
        ):
            return self._pynetdicom_step()
        assert sock is not None
        try:
            ready, _, _ = select.select([sock], [], [], POLL_S)
        except (OSError, ValueError):
            return self._pynetdicom_step()
        if not ready:
            return False
        try:
            header = bytearray(PDU_HEADER.size)
            _read_into(sock, memoryview(header))
            pdu_type, _, length = PDU_HEADER.unpack(header)
            if self._gathered + length > self._max_bytes + 2**16:
                self._abort(f"a request beyond {self._max_bytes // 2**20} MiB")
                return True
            pdu = bytearray(PDU_HEADER.size + length)
            pdu[: PDU_HEADER.size] = header
            _read_into(sock, memoryview(pdu)[PDU_HEADER.size :])
        except OSError:
            # As pynetdicom's own read: the transport connection closed (or timed out).
            self.active = False
            dul.event_queue.put(EVT_TRANSPORT_CLOSED)
            return True
        if pdu_type != P_DATA_TF:
            self._hand_back(pdu)
            return True
        self._pending.append(pdu)
        self._gathered += length
        try:
            self._take(memoryview(pdu))
        except _HandBack:
            self._hand_back()
        return True

    # -- gathering a request ---------------------------------------------------------------

    def _take(self, pdu: memoryview) -> None:
        """Gather the PDU's fragments; serve the request they complete (its last PDV)."""
        at, end = PDU_HEADER.size, len(pdu)
        while at < end:
            if at + PDV_HEADER.size > end:
                raise _HandBack
            item_length, context_id, control = PDV_HEADER.unpack_from(pdu, at)
            fragment_end = at + 4 + item_length
            if item_length < 2 or fragment_end > end:
                raise _HandBack
            fragment = pdu[at + PDV_HEADER.size : fragment_end]
            at = fragment_end
            complete = self._fragment(context_id, control, fragment)
            if complete:
                if at != end:
                    raise _HandBack  # more follows the request in this PDU
                self._serve()

    def _fragment(self, context_id: int, control: int, fragment: memoryview) -> bool:
        """Take one fragment; True when it completes a request."""
        if self._request is None:
            if not control & IS_COMMAND:
                raise _HandBack
            if self._command and context_id != self._context_id:
                raise _HandBack
            self._context_id = context_id
            self._command.append(fragment)
            if not control & IS_LAST:
                return False
            try:
                self._request = parse_command(b"".join(self._command))
            except MalformedCommand:
                raise _HandBack from None
            if not self._servable(self._request):
                raise _HandBack
            return not self._request.has_data_set
        if control & IS_COMMAND or context_id != self._context_id:
            raise _HandBack
        self._data.append(fragment)
        return bool(control & IS_LAST)

    def _servable(self, request: Command) -> bool:
        context = self._context(self._context_id)
        if context is None:
            return False
        abstract_syntax = context[0]
        if request.field == C_ECHO_RQ:
            return abstract_syntax == VERIFICATION and not request.has_data_set
        return request.field == C_STORE_RQ and abstract_syntax != VERIFICATION

    def _context(self, context_id: int) -> tuple[str, str] | None:
        if self._contexts is None:
            self._contexts = {
                int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                for cx in self._assoc.accepted_contexts
                if cx.context_id is not None and cx.abstract_syntax and cx.transfer_syntax
            }
        return self._contexts.get(context_id)

    # -- serving ---------------------------------------------------------------------------

    def _serve(self) -> None:
        request, context_id = self._request, self._context_id
        assert request is not None
        # One fragment (a data set within one PDU) is passed as a view of the PDU, not copied.
        data = self._data[0] if len(self._data) == 1 else memoryview(b"".join(self._data))
        self._reset()
        abstract_syntax, transfer_syntax = self._context(context_id) or ("", "")
        if request.field == C_ECHO_RQ:
            status, comment = 0x0000, ""
        else:
            status, comment = self._store(
                self._assoc,
                StoreRequest(
                    abstract_syntax=abstract_syntax,
                    transfer_syntax=transfer_syntax,
                    sop_class_uid=request.sop_class_uid,
                    sop_instance_uid=request.sop_instance_uid,
                    data_set=data,
                ),
            )
        response = response_command(
            request,
            status=status,
            error_comment=comment,
            sop_class_uid=VERIFICATION if request.field == C_ECHO_RQ else "",
        )
        max_pdu = int(self._assoc.requestor.maximum_length or 0)
        answer = b"".join(
            pdus(response, context_id=context_id, max_pdu_length=max_pdu, command=True)
        )
        transport = self._dul.socket
        sock = transport.socket if transport is not None else None
        try:
            if sock is None:
                raise ConnectionError("socket closed")
            sock.sendall(answer)
        except OSError:
            self.active = False
            self._dul.event_queue.put(EVT_TRANSPORT_CLOSED)
            return
        self.served += 1

    def _reset(self) -> None:
        self._pending.clear()
        self._gathered = 0
        self._command.clear()
        self._data.clear()
        self._request = None

    def _hand_back(self, *more: bytearray) -> None:
        """The gathered PDUs and ``more`` to pynetdicom, read as its own read step would; the
        association stays on pynetdicom's path."""
        self.active = False
        pending = [*self._pending, *more]
        self._reset()
        for raw in pending:
            if not hand_to_pynetdicom(self._dul, raw):
                logger.warning("an undecodable PDU from %s", self._assoc.requestor.ae_title)
                return

    def _abort(self, why: str) -> None:
        logger.warning("aborting an association from %s: %s", self._assoc.requestor.ae_title, why)
        self.active = False
        self._reset()
        self._dul.event_queue.put(EVT_INVALID_PDU)


def hand_to_pynetdicom(dul: Any, raw: bytes | bytearray) -> bool:
    """Give pynetdicom's reactor a PDU as if its own read step had read it; False (and an
    invalid-PDU event: pynetdicom aborts) when it cannot be decoded."""
    try:
        pdu, event = dul._decode_pdu(raw)
    except Exception:
        dul.event_queue.put(EVT_INVALID_PDU)
        return False
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)
    return True


def read_pdu(sock: socket.socket, *, max_length: int) -> tuple[int, bytearray]:
    """One whole PDU from ``sock``: its type and its bytes (header included). OSError as
    ``_read_into``; ValueError when the peer announces a PDU longer than ``max_length``."""
    header = bytearray(PDU_HEADER.size)
    _read_into(sock, memoryview(header))
    pdu_type, _, length = PDU_HEADER.unpack(header)
    if length > max_length:
        raise ValueError(f"a PDU of {length} bytes")
    pdu = bytearray(PDU_HEADER.size + length)
    pdu[: PDU_HEADER.size] = header
    _read_into(sock, memoryview(pdu)[PDU_HEADER.size :])
    return pdu_type, pdu


def _read_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; ConnectionError (an OSError) when the peer closes first,
    TimeoutError when a read outlasts the socket's timeout."""
    got, size = 0, len(view)
    while got < size:
        received = sock.recv_into(view[got:])
        if received == 0:
            raise ConnectionError("the peer closed the connection")
        got += received


def install_direct_receive(assoc: Association, store: StoreHandler, *, max_bytes: int) -> bool:
    """Read this association's requests directly once it is established (before it starts:
    EVT_CONN_OPEN); False when pynetdicom's reactor has changed and keeps its own read step."""
    dul = assoc.dul
    if not (
        callable(getattr(dul, "_is_transport_event", None))
        and callable(getattr(dul, "_decode_pdu", None))
        and hasattr(dul, "_recv_pdu")
        and hasattr(getattr(dul, "state_machine", None), "current_state")
    ):
        return False
    dul._is_transport_event = DirectReceiver(assoc, store, max_bytes=max_bytes)  # type: ignore[method-assign]
    return True
