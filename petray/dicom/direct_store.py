"""A C-STORE request written straight to the association's socket (issue 13: the sender's CPU).

pynetdicom hands every P-DATA-TF PDU of a message from the caller's thread to its reactor
thread through a queue, building and encoding a primitive for each. A 387 KB PET slice is 24
PDUs at the 16 KB most PACS accept (Orthanc's and storescp's default), and those hand-overs
cost several milliseconds of CPU per instance: the sender, not the network, bounded a
delivery. Here the command set is encoded without a pydicom dataset (one PDU), the data set
is read from the file once and cut into PDUs, and the whole request goes out with one
``sendall`` from the caller's thread. The response is read through pynetdicom's DIMSE queue,
as before.

Only on a plain TCP association that is established and sends nothing else meanwhile: the
reactor thread writes to the socket only for primitives queued to it, and none is queued
during a C-STORE, while its reads go on as a socket allows. Never over TLS: one SSL connection
must not be read and written by two threads at once (``usable`` says so).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.association import Association

P_DATA_TF = 0x04
# Message Control Header (PS3.8 E.2): bit 0 command (1) or data set (0), bit 1 last fragment.
DATA_MORE, DATA_LAST, COMMAND_MORE, COMMAND_LAST = 0x00, 0x02, 0x01, 0x03
C_STORE_RQ_FIELD = 0x0001
# Command Data Set Type: anything but 0x0101 says a data set follows (PS3.7 E.1); 0x0001
# as pynetdicom sends.
DATA_SET_PRESENT = 0x0001
# PDU-length (4) covers the PDV item: its length (4), context ID (1) and control header (1).
PDV_OVERHEAD = 6
# The C-STORE priority pynetdicom sends by default (PS3.7 9.1.1.1: LOW = 2).
PRIORITY = 2


def usable(assoc: Association) -> bool:
    """Whether the association's socket is plain TCP (see the module's docstring)."""
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    return type(sock) is socket.socket


def pdv_header(context_id: int, control: int, fragment_length: int) -> bytes:
    """The P-DATA-TF PDU header and its one PDV item's header (PS3.8 9.3.5, E.2)."""
    item_length = fragment_length + 2
    return struct.pack(">BBLLBB", P_DATA_TF, 0, item_length + 4, item_length, context_id, control)


def pdus(
    data: bytes | memoryview, *, context_id: int, max_pdu_length: int, command: bool = False
) -> Iterator[bytes | memoryview]:
    """A command set or data set cut into P-DATA-TF PDUs no longer than the peer's maximum
    (0: no limit), the last one marked so: each PDU's header, then its fragment (a view of
    ``data``, not a copy)."""
    view = memoryview(data)
    size = len(view) if max_pdu_length == 0 else max_pdu_length - PDV_OVERHEAD
    size = max(size, 1)
    last = max(len(view) - 1, 0) // size * size
    more_flag, last_flag = (COMMAND_MORE, COMMAND_LAST) if command else (DATA_MORE, DATA_LAST)
    for start in range(0, max(len(view), 1), size):
        fragment = view[start : start + size]
        yield pdv_header(context_id, last_flag if start == last else more_flag, len(fragment))
        yield fragment


def _element(group: int, element: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (every command set is, PS3.7 6.3.1)."""
    return struct.pack("<HHL", group, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw  # UI values are padded with NUL (PS3.5 6.2)


def c_store_command(*, msg_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), elements in tag order, with its group
    length: what pynetdicom would encode, without building a pydicom dataset per instance."""
    body = b"".join(
        [
            _element(0x0000, 0x0002, _uid(sop_class_uid)),  # Affected SOP Class UID
            _element(0x0000, 0x0100, struct.pack("<H", C_STORE_RQ_FIELD)),  # Command Field
            _element(0x0000, 0x0110, struct.pack("<H", msg_id)),  # Message ID
            _element(0x0000, 0x0700, struct.pack("<H", PRIORITY)),  # Priority
            _element(0x0000, 0x0800, struct.pack("<H", DATA_SET_PRESENT)),  # Data Set Type
            _element(0x0000, 0x1000, _uid(sop_instance_uid)),  # Affected SOP Instance UID
        ]
    )
    return _element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


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
