"""What the HTTP layer may ask of the running pipeline, without knowing it is made of Ray actors.

``serve/`` depends on this protocol; ``actors/`` provides the implementation and tests may
provide a fake. All methods are async so a request handler never blocks its event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ActorStatus:
    name: str
    alive: bool
    backlog: int = 0
    processed: int = 0
    failed: int = 0
    details: dict[str, object] = field(default_factory=dict)


class PipelineControl(Protocol):
    async def result_ready(self, task_id: str) -> None:
        """The service has a result: start the download (the task is already downloading)."""

    async def resume(self, task_id: str) -> None:
        """Dispatch a task to the actor owning its current (committed) stage, e.g. after a retry."""

    async def status(self) -> list[ActorStatus]:
        """Liveness, backlog and counters of each pipeline actor."""

    async def reload_dicom_listener(self) -> None:
        """Re-read the local AE title/port from the site configuration and restart the SCP."""
