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


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)
FINAL_STATES = frozenset({State.FAILED, State.DONE, State.CANCELLED})


def next_stage(stage: Stage) -> Stage:
    index = STAGE_ORDER.index(stage)
    if index + 1 >= len(STAGE_ORDER):
        raise ValueError(f"{stage} is the last stage")
    return STAGE_ORDER[index + 1]
