"""Value limits of the VRs petray reads, checks or writes (PS3.5 6.2): the one home of them."""

from __future__ import annotations

AE_MAX_LENGTH = 16
CS_MAX_LENGTH = 16
DS_MAX_LENGTH = 16
LO_MAX_LENGTH = 64
SH_MAX_LENGTH = 16
ST_MAX_LENGTH = 1024
UI_MAX_LENGTH = 64  # PS3.5 9.1


def ae_title(value: str) -> str:
    """An Application Entity title without its padding, or ``ValueError`` saying what is wrong:
    1-16 printable ASCII characters, no backslash (PS3.5 6.2, VR AE)."""
    value = value.strip()
    if not value or len(value) > AE_MAX_LENGTH or "\\" in value:
        raise ValueError("AE title must be 1-16 characters without backslash (PS3.5 6.2)")
    if not value.isascii() or any(ord(ch) < 0x20 for ch in value):
        raise ValueError("AE title must be printable ASCII (PS3.5 6.2)")
    return value
