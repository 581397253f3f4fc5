"""Reading vendors' private elements by their private creator (PS3.5 7.8.1), never by a fixed tag.

A private block's element number depends on where the creator landed in the group ((gggg,0010)
to (gggg,00FF)); looking the creator up is the only reliable way to find, say, Philips's
activity concentration scale factor, whatever block a given export put it in.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from petray.dicom.values import finite_float

# Binary encodings of an implicit-VR (UN) private element without a dictionary entry.
_BINARY = {8: "<d", 4: "<f"}


def private_value(ds: Dataset, group: int, creator: str, offset: int) -> Any | None:
    """The value of element ``offset`` (0x00-0xFF) of ``creator``'s block in ``group``, or None."""
    try:
        return ds.private_block(group, creator)[offset].value
    except KeyError:
        return None


def _from_bytes(raw: bytes) -> float | None:
    try:
        number = finite_float(raw.decode("ascii").strip("\x00 ").split("\\")[0])
    except UnicodeDecodeError:
        number = None
    if number is None and len(raw) in _BINARY:
        (number,) = struct.unpack(_BINARY[len(raw)], raw)
        number = finite_float(number)
    return number


def as_float(value: Any) -> float | None:
    """A finite float from a private value as written (DS, FD, FL, first of several values) or as
    the raw bytes of an implicit-VR element (decimal text, or a little-endian double/float)."""
    if isinstance(value, bytes):
        return _from_bytes(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    return finite_float(value)
