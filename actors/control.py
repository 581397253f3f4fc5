"""The running pipeline as the HTTP layer sees it (petray.ports.PipelineControl) over Ray."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.names import DOWNLOADER, NAMESPACE, PIPELINE_ACTORS, STORE_SCP
from actors.runtime import Dispatcher
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.ports import ActorStatus
from petray.tasks import get_task

logger = logging.getLogger(__name__)
STATUS_TIMEOUT_S = 2.0


class RayPipelineControl:
    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions
        self._dispatcher = Dispatcher()

    async def result_ready(self, task_id: str) -> None:
        # Fire and forget: the download runs in the Downloader's mailbox, not in this request.
        self._dispatcher.handle(DOWNLOADER).submit.remote(task_id)

    async def resume(self, task_id: str) -> None:
        with unit_of_work(self._sessions) as session:
            stage = Stage(get_task(task_id, session=session).stage)
        self._dispatcher.submit(stage, task_id)

    async def status(self) -> list[ActorStatus]:
        return list(await asyncio.gather(*(self._one_status(name) for name in PIPELINE_ACTORS)))

    async def reload_dicom_listener(self) -> None:
        await self._dispatcher.handle(STORE_SCP).start.remote()

    async def _one_status(self, name: str) -> ActorStatus:
        short = name.rsplit(".", 1)[-1]
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
            info: dict[str, Any] = await asyncio.wait_for(
                handle.status.remote(), timeout=STATUS_TIMEOUT_S
            )
        except (ValueError, TimeoutError, ray.exceptions.RayError) as exc:
            return ActorStatus(name=short, alive=False, details={"error": type(exc).__name__})
        return ActorStatus(
            name=short,
            alive=True,
            backlog=int(info.get("backlog", 0)),
            processed=int(info.get("processed", info.get("received", 0))),
            failed=int(info.get("failed", info.get("refused", 0))),
            details=info,
        )
