"""UID validation (PS3.5 9.1): every UID is checked before a path or a query is built from it."""

from __future__ import annotations

import re

from petray.dicom.vr import UI_MAX_LENGTH as UID_MAX_LENGTH
from petray.errors import InvalidInstance

# Components are digits without a leading zero (a lone "0" is fine), separated by single dots;
# at least two components, since a UID is a registered root followed by a suffix.
_UID_PATTERN = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")


def validate_uid(value: str) -> str:
    """``value`` without its even-length padding, or InvalidInstance saying what is wrong.

    The reason never repeats the value: a UID from a hospital may identify a patient's study.
    """
    if not isinstance(value, str):
        raise InvalidInstance(f"UID must be text, not {type(value).__name__}")
    # PS3.5 9.1: a UID of odd length is padded with one NUL to an even length; some senders pad
    # with a space instead. Tolerate both, but only as trailing padding.
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidInstance("UID is empty")
    if len(uid) > UID_MAX_LENGTH:
        raise InvalidInstance(f"UID is {len(uid)} characters long (at most {UID_MAX_LENGTH})")
    if not _UID_PATTERN.fullmatch(uid):
        raise InvalidInstance(
            "UID must be digit components separated by dots, without leading zeros or empty "
            "components (PS3.5 9.1)"
        )
    return uid


def is_valid_uid(value: str) -> bool:
    try:
        validate_uid(value)
    except InvalidInstance:
        return False
    return True
