"""A C-STORE request written straight to the association's socket (issue 13: the sender's CPU).

pynetdicom hands every P-DATA-TF PDU of a message from the caller's thread to its reactor
thread through a queue, building and encoding a primitive for each. A 387 KB PET slice is 24
PDUs at the 16 KB most PACS accept (Orthanc's and storescp's default), and those hand-overs
cost several milliseconds of CPU per instance: the sender, not the network, bounded a
delivery. Here the command set is encoded without a pydicom dataset (one PDU), the data set
is read from the file once and cut into PDUs, and the whole request goes out with one
``sendall`` from the caller's thread.

Only on a plain TCP association that is established and sends nothing else meanwhile: the
reactor thread writes to the socket only for primitives queued to it, and none is queued
during a C-STORE. Never over TLS: one SSL connection must not be read and written by two
threads at once (``usable`` says so).

``ResponseReader`` is the read step of the requestor's DUL reactor. pynetdicom's reactor looks
at its socket and its queue every ``_run_loop_delay`` (0.1 ms here, for a prompt response):
about 6,000 wake-ups a second per association, which cost more CPU than the sending itself.
Once the association is established on plain TCP, the reader waits in ``select`` on the socket
and on a wake-up socket written whenever the caller queues something for the reactor (a
release, an abort, pynetdicom's own P-DATA), so a response and a request are both handled at
once. A PDU that is one whole plain C-STORE-RSP goes to the DIMSE queue as a
``DirectResponse``, without pynetdicom's decoding into objects (petray.dicom.scu keeps the
association's reactor from taking it); anything else (an abort, a release, a fragmented or
unusual response) goes to pynetdicom as if it had read it, and so does every PDU after it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from petray.dicom.direct_receive import (
    ESTABLISHED,
    EVT_INVALID_PDU,
    EVT_TRANSPORT_CLOSED,
    hand_to_pynetdicom,
    read_pdu,
)
from petray.dicom.wire import (
    COMMAND_LAST,
    P_DATA_TF,
    PDU_HEADER,
    PDV_HEADER,
    StoreResponse,
    c_store_command,
    parse_store_response,
    pdus,
)

# A PDU longer than this from a storage SCP (whose responses are a few hundred bytes) is taken
# for what it is, an invalid one: pynetdicom aborts the association.
MAX_PDU_READ = 2**24
# The longest one read step waits: how soon the reactor notices its kill flag or a timer.
WAIT_S = 0.05


def usable(assoc: Association) -> bool:
    """Whether the association's socket is plain TCP (see the module's docstring)."""
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    return type(sock) is socket.socket


def send_c_store(
    assoc: Association,
    path: Path,
    offset: int,
    *,
    context_id: int,
    msg_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
) -> Dataset:
    """Send ``path``'s data set (its bytes from ``offset``, already in the context's transfer
    syntax) and return the response's status dataset, empty when none came (the association is
    then aborted, as pynetdicom's ``send_c_store`` does). ``OSError`` when the file cannot be
    read; ``ConnectionError`` when the socket fails."""
    with path.open("rb") as file:
        file.seek(offset)
        data = file.read()
    command = c_store_command(
        msg_id=msg_id, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
    )
    max_pdu = assoc.dimse.maximum_pdu_size
    request = b"".join(
        [
            *pdus(command, context_id=context_id, max_pdu_length=max_pdu, command=True),
            *pdus(data, context_id=context_id, max_pdu_length=max_pdu),
        ]
    )
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is None:
        raise ConnectionError("the association's socket is closed")
    try:
        sock.sendall(request)
    except OSError as exc:
        raise ConnectionError(f"sending failed: {exc}") from exc
    _context, response = assoc.dimse.get_msg(block=True)
    if response is None:
        if assoc.is_established:
            assoc.abort()  # no answer within the DIMSE timeout
        return Dataset()
    return assoc._check_received_status(response)


class ResponseReader:
    """The read step of a requestor's DUL reactor (see the module's docstring). Install with
    ``install`` before the reactor starts (EVT_CONN_OPEN)."""

    def __init__(self, dul: Any) -> None:
        self._dul = dul
        self._pynetdicom_step: Callable[[], bool] = dul._is_transport_event
        # Until something is handed to pynetdicom: from then on its reads, not ours, so that
        # a message split over PDUs is never half read by each.
        self.direct = True
        self.read = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Closed by ``close`` when the association ends, else when the reader is collected.
        self._closed = weakref.finalize(self, _close, self._wake_r, self._wake_w)
        queue = dul.to_provider_queue
        put = queue.put
        wake = self._wake_w

        def put_and_wake(item: Any, block: bool = True, timeout: float | None = None) -> None:
            put(item, block, timeout)
            with contextlib.suppress(OSError):  # full (already awake) or closed
                wake.send(b"\0")

        queue.put = put_and_wake

    @classmethod
    def install(cls, dul: Any) -> ResponseReader | None:
        """Replace ``dul``'s read step; None (nothing changed) on an unexpected pynetdicom."""
        needed = ("_is_transport_event", "_decode_pdu")
        if not (
            all(callable(getattr(dul, name, None)) for name in needed)
            and hasattr(dul, "_recv_pdu")
            and callable(getattr(getattr(dul, "to_provider_queue", None), "put", None))
            and isinstance(getattr(getattr(dul, "assoc", None), "dimse", None), object)
            and hasattr(getattr(dul.assoc, "dimse", None), "msg_queue")
        ):
            return None
        reader = cls(dul)
        dul._is_transport_event = reader
        return reader

    def close(self) -> None:
        """Let go of the wake-up sockets (the association is over; a late read step falls back
        to pynetdicom's own, and a late wake-up is ignored)."""
        self._closed()

    def __call__(self) -> bool:
        """One read step: True when a PDU was read (the reactor restarts its idle timer).

        The reactor calls it only when its queue from the user was empty; anything queued after
        that look writes the wake-up socket, so ``select`` returns at once."""
        dul = self._dul
        transport = dul.socket
        sock = transport.socket if transport is not None else None
        if type(sock) is not socket.socket or dul.state_machine.current_state != ESTABLISHED:
            return self._pynetdicom_step()
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], WAIT_S)
        except (OSError, ValueError):  # closed meanwhile: pynetdicom's step says so
            return self._pynetdicom_step()
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        if sock not in ready:
            return False
        if not self.direct:
            return self._pynetdicom_step()
        try:
            pdu_type, pdu = read_pdu(sock, max_length=MAX_PDU_READ)
        except OSError:  # as pynetdicom's own read: the transport connection closed
            self.direct = False
            dul.event_queue.put(EVT_TRANSPORT_CLOSED)
            return True
        except ValueError:
            self.direct = False
            dul.event_queue.put(EVT_INVALID_PDU)
            return True
        response = _single_store_response(pdu) if pdu_type == P_DATA_TF else None
        if response is None:
            self.direct = False
            hand_to_pynetdicom(dul, pdu)
            return True
        context_id, parsed = response
        self.read += 1
        dul.assoc.dimse.msg_queue.put((context_id, DirectResponse(parsed)))
        return True


class DirectResponse:
    """A C-STORE-RSP read by ``ResponseReader``, in the DIMSE queue in place of pynetdicom's
    decoded message, with what pynetdicom's ``send_c_store`` and ``_check_received_status``
    read of one (a send through pynetdicom may get it too)."""

    STATUS_OPTIONAL_KEYWORDS = ("OffendingElement", "ErrorComment")
    is_valid_response = True
    OffendingElement = None

    def __init__(self, response: StoreResponse) -> None:
        self.MessageIDBeingRespondedTo = response.message_id_responded_to
        self.Status = response.status
        self.ErrorComment = response.error_comment or None


def _single_store_response(pdu: bytearray) -> tuple[int, StoreResponse] | None:
    """(context ID, response) when the P-DATA-TF PDU is one whole C-STORE-RSP command set."""
    at = PDU_HEADER.size
    if at + PDV_HEADER.size > len(pdu):
        return None
    item_length, context_id, control = PDV_HEADER.unpack_from(pdu, at)
    if at + 4 + item_length != len(pdu) or control != COMMAND_LAST:
        return None
    response = parse_store_response(memoryview(pdu)[at + PDV_HEADER.size :])
    return None if response is None else (context_id, response)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()
