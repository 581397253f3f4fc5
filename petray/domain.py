"""Task stages and states: the vocabulary of the pipeline (issue 2)."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    COMPILING = "compiling"
    VALIDATING = "validating"
    PACKING = "packing"
    UPLOADING = "uploading"
    PROCESSING = "processing"
    DOWNLOADING = "downloading"
    UNPACKING = "unpacking"
    SENDING = "sending"
    DONE = "done"


class State(StrEnum):
    ACTIVE = "active"
    WAITING = "waiting"
    FAILED = "failed"
    DONE = "done"
    CANCELLED = "cancelled"
    # Stopped before sending by the quantitative check (issue 15): waits for an operator to
    # release or reject it. Not final, and never taken up again by the pipeline on its own.
    HELD = "held"


FINAL_STATES = frozenset({State.FAILED, State.DONE, State.CANCELLED})
