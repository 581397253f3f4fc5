"""Named DIMSE status codes petray answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    # PS3.4 B.2.3: "Refused: Out of Resources" — the sender may retry later.
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # PS3.7 C.4.2: processing failure, used when storing fails on our side.
    PROCESSING_FAILURE = 0x0110
