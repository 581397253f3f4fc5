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
    # Times the actor was restarted since it was created (a crash, ``ray.kill``, a lost node);
    # None when unknown.
    restarts: int | None = None
    # Alive but its status did not come back in time: busy or hung, counters unknown.
    responding: bool = True
    # The DICOM listener's state, for the actor that owns it; None for every other actor.
    listening: bool | None = None
    details: dict[str, object] = field(default_factory=dict)


class PipelineControl(Protocol):
    async def result_ready(self, task_id: str) -> None:
        """The service has a result: start the download (the task is already downloading)."""

    async def resume(self, task_id: str) -> None:
        """Dispatch a task to the actor owning its current (committed) stage, e.g. after a retry."""

    async def status(self) -> list[ActorStatus]:
        """Liveness, restarts, backlog and counters of each pipeline actor.

        Answers within about half a second even when an actor hangs (that actor is then
        reported as not responding), so the health endpoint can call it on every probe.
        """

    async def reload_dicom_listener(self) -> None:
        """Re-read the local AE title/port from the site configuration and restart the SCP."""
