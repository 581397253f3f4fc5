"""DIMSE messages on the wire without pynetdicom's objects (issue 13: CPU per instance).

P-DATA-TF framing (PS3.8 9.3.5, E.2) and the few command sets petray sends or answers
(PS3.7 9.3.1, 9.3.5), encoded and decoded directly: building a pydicom dataset and a
pynetdicom primitive per message costs more than the message. Used by the direct C-STORE
sender (direct_store) and the direct receiver (direct_receive); tests compare the bytes
with pynetdicom's own encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

P_DATA_TF = 0x04
# PDU type (1), reserved (1), PDU length (4).
PDU_HEADER = struct.Struct(">BBL")
# A PDV item: its length (4), presentation context ID (1), message control header (1).
PDV_HEADER = struct.Struct(">LBB")
# Message Control Header (PS3.8 E.2): bit 0 command (1) or data set (0), bit 1 last fragment.
DATA_MORE, DATA_LAST, COMMAND_MORE, COMMAND_LAST = 0x00, 0x02, 0x01, 0x03
IS_COMMAND, IS_LAST = 0x01, 0x02
# PDU-length (4) covers the PDV item: its length (4), context ID (1) and control header (1).
PDV_OVERHEAD = 6

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
# Command Data Set Type: 0x0101 says no data set follows; anything else that one does
# (PS3.7 E.1). 0x0001 as pynetdicom sends.
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0001
# The C-STORE priority pynetdicom sends by default (PS3.7 9.1.1.1: LOW = 2).
PRIORITY = 2

_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")


class MalformedCommand(ValueError):
    """A command set that is not a sequence of whole group 0000 elements."""


@dataclass(frozen=True)
class Command:
    """What a request's command set says, as far as petray serves requests."""

    field: int
    message_id: int
    has_data_set: bool
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


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


def _element(element: int, value: bytes) -> bytes:
    """One group 0000 element, Implicit VR Little Endian (every command set is, PS3.7 6.3.1)."""
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw  # UI values are padded with NUL (PS3.5 6.2)


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw  # text values are padded with a space


def _command_set(elements: list[bytes]) -> bytes:
    """The elements (in tag order) behind their Command Group Length."""
    body = b"".join(elements)
    return _element(0x0000, _UL.pack(len(body))) + body


def c_store_command(*, msg_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), as pynetdicom encodes it."""
    return _command_set(
        [
            _element(0x0002, _uid(sop_class_uid)),  # Affected SOP Class UID
            _element(0x0100, _US.pack(C_STORE_RQ)),  # Command Field
            _element(0x0110, _US.pack(msg_id)),  # Message ID
            _element(0x0700, _US.pack(PRIORITY)),  # Priority
            _element(0x0800, _US.pack(DATA_SET_PRESENT)),  # Command Data Set Type
            _element(0x1000, _uid(sop_instance_uid)),  # Affected SOP Instance UID
        ]
    )


def response_command(
    request: Command, *, status: int, error_comment: str = "", sop_class_uid: str = ""
) -> bytes:
    """The C-STORE-RSP or C-ECHO-RSP command set for ``request`` (PS3.7 9.3.1.2, 9.3.5.2),
    as pynetdicom encodes it; Error Comment (LO, 64 characters) only when given."""
    field = C_STORE_RSP if request.field == C_STORE_RQ else C_ECHO_RSP
    elements = [
        _element(0x0002, _uid(sop_class_uid or request.sop_class_uid)),
        _element(0x0100, _US.pack(field)),
        _element(0x0120, _US.pack(request.message_id)),  # Message ID Being Responded To
        _element(0x0800, _US.pack(NO_DATA_SET)),
        _element(0x0900, _US.pack(status)),
    ]
    if error_comment:
        elements.append(_element(0x0902, _text(error_comment[:64])))
    if field == C_STORE_RSP:
        elements.append(_element(0x1000, _uid(request.sop_instance_uid)))
    return _command_set(elements)


def parse_command(data: bytes | memoryview) -> Command:
    """The request fields of a command set; MalformedCommand when it is not whole elements of
    group 0000 or lacks its Command Field or Message ID."""
    view = memoryview(data)
    end, at = len(view), 0
    values: dict[int, memoryview] = {}
    while at < end:
        if at + 8 > end:
            raise MalformedCommand("command set ends inside an element header")
        group, element, length = _ELEMENT_HEADER.unpack_from(view, at)
        at += 8
        if group != 0x0000 or length > end - at:
            raise MalformedCommand("command set holds an element outside group 0000")
        values[element] = view[at : at + length]
        at += length
    try:
        (field,) = _US.unpack(values[0x0100])
        (message_id,) = _US.unpack(values[0x0110])
        (data_set_type,) = _US.unpack(values.get(0x0800, _US.pack(NO_DATA_SET)))
    except (KeyError, struct.error):
        raise MalformedCommand("command set lacks its Command Field or Message ID") from None
    return Command(
        field=field,
        message_id=message_id,
        has_data_set=data_set_type != NO_DATA_SET,
        sop_class_uid=_decoded_uid(values.get(0x0002)),
        sop_instance_uid=_decoded_uid(values.get(0x1000)),
    )


@dataclass(frozen=True)
class StoreResponse:
    """A C-STORE-RSP command set as a sender needs it (PS3.7 9.3.1.2)."""

    message_id_responded_to: int
    status: int
    error_comment: str = ""


# The elements a plain C-STORE-RSP holds; one with any other (Offending Element, ...) is left to
# pynetdicom, which decodes them all.
_STORE_RESPONSE_ELEMENTS = frozenset(
    {0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x0902, 0x1000}
)


def parse_store_response(data: bytes | memoryview) -> StoreResponse | None:
    """The C-STORE-RSP in ``data``; None when it is anything else, is malformed, or holds
    elements beyond the plain ones (the caller then lets pynetdicom decode it)."""
    view = memoryview(data)
    end, at = len(view), 0
    values: dict[int, memoryview] = {}
    while at < end:
        if at + 8 > end:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(view, at)
        at += 8
        if group != 0x0000 or length > end - at or element not in _STORE_RESPONSE_ELEMENTS:
            return None
        values[element] = view[at : at + length]
        at += length
    try:
        (field,) = _US.unpack(values[0x0100])
        (responded_to,) = _US.unpack(values[0x0120])
        (status,) = _US.unpack(values[0x0900])
        (data_set_type,) = _US.unpack(values.get(0x0800, _US.pack(NO_DATA_SET)))
    except (KeyError, struct.error):
        return None
    if field != C_STORE_RSP or data_set_type != NO_DATA_SET:
        return None
    comment = values.get(0x0902)
    text = bytes(comment).decode("ascii", "replace").strip(" \0") if comment is not None else ""
    return StoreResponse(responded_to, status, text)


def _decoded_uid(value: memoryview | None) -> str:
    if value is None:
        return ""
    return bytes(value).decode("ascii", "replace").rstrip("\0 ")
