"""UploaderActor: archive into the shared folder, then ``POST /processing``; watches deadlines."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ray

from actors.names import STAGE_ACTORS
from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.domain import Stage, State
from petray.service.remote import RemoteClient
from petray.service.shared_folder import copy_atomically
from petray.site.siteconfig import effective_client_id, effective_remote_url
from petray.stages.records import Packed, Validated
from petray.task_files import TaskFiles
from petray.tasks import fail, get_task, move_to

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class UploaderActor(StageWorker):
    stage = Stage.UPLOADING
    concurrency = 2

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._deadlines: dict[str, asyncio.TimerHandle] = {}

    def tracks(self, task_id: str) -> bool:
        return super().tracks(task_id) or task_id in self._deadlines

    async def submit(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            task = session.get(Task, task_id)
            stage = task.stage if task is not None else None
        if stage == Stage.PROCESSING.value:
            self._watch_deadline(task_id)
            self._unpacker_prepares(task_id)
            return
        await super().submit(task_id)

    def handle(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            archive = Path(Packed.of(task).archive)
            metadata = Validated.of(task).processing
            remote_url = effective_remote_url(self.settings, session=session)
            client_id = effective_client_id(self.settings, session=session)
        copy_atomically(archive, TaskFiles.of(self.settings, task_id).to_process)
        with RemoteClient(
            remote_url, self.settings.remote_token, timeout_s=self.settings.remote_timeout_s
        ) as client:
            client.start_processing(task_id=task_id, client_id=client_id, metadata=metadata)

    def on_advance(self, task: Any, target: Stage, *, session: Any) -> None:
        task.deadline = datetime.now(UTC) + timedelta(seconds=self.settings.processing_deadline_s)
        move_to(
            task, target, session=session, state=State.WAITING, message="waiting for the result"
        )

    def _unpacker_prepares(self, task_id: str) -> None:
        """While the service works, the Unpacker gets ready for the result (issue 13)."""
        try:
            self.dispatcher.handle(STAGE_ACTORS[Stage.UNPACKING]).prepare.remote(task_id)
        except Exception:
            logger.warning("task %s: no Unpacker to prepare for its result", task_id)

    def _watch_deadline(self, task_id: str) -> None:
        with unit_of_work(self.sessions) as session:
            task = session.get(Task, task_id)
            deadline = task.deadline if task is not None else None
        if deadline is None:
            return
        remaining = (deadline - datetime.now(UTC)).total_seconds()
        old = self._deadlines.pop(task_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[task_id] = loop.call_later(max(remaining, 0.0), self._expire, task_id)

    def _expire(self, task_id: str) -> None:
        self._deadlines.pop(task_id, None)
        with unit_of_work(self.sessions) as session:
            task = session.get(Task, task_id, with_for_update=True)
            if task is None:
                return
            if task.stage != Stage.PROCESSING.value or task.state != State.WAITING.value:
                return
            hours = self.settings.processing_deadline_s / 3600
            fail(
                task,
                f"no result from the processing service within {hours:g} h; retry to upload again",
                session=session,
            )
        logger.warning("task %s: processing deadline passed", task_id)

    async def status(self) -> dict[str, Any]:
        info = await super().status()
        info["awaiting_results"] = len(self._deadlines)
        return info
