"""A C-STORE request written straight to the association's socket (issue 13: the sender's CPU).

pynetdicom hands every P-DATA-TF PDU of a message from the caller's thread to its reactor
thread through a queue, building and encoding a primitive for each. A 387 KB PET slice is 24
PDUs at the 16 KB most PACS accept (Orthanc's and storescp's default), and those hand-overs
cost several milliseconds of CPU per instance: the sender, not the network, bounded a
delivery. Here the command set is encoded without a pydicom dataset (one PDU), the data set
is read from the file once and cut into PDUs, and the whole request goes out with one
``sendall`` from the caller's thread. The response is read through pynetdicom's DIMSE queue,
as before (petray.dicom.scu keeps the association's reactor from taking it).

Only on a plain TCP association that is established and sends nothing else meanwhile: the
reactor thread writes to the socket only for primitives queued to it, and none is queued
during a C-STORE, while its reads go on as a socket allows. Never over TLS: one SSL connection
must not be read and written by two threads at once (``usable`` says so).
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from petray.dicom.wire import c_store_command, pdus


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
