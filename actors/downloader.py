"""DownloaderActor: the result archive from the shared folder to local storage, verified.

The service's callback is the fast path. Results are also found, not only announced (issue 8):
whenever the actor (re)starts, and every ``sweep_interval_s``, a task waiting for its result
whose archive is already in ``processed/`` moves on as if the callback had come — a callback
refused while the gateway was down is not lost.
"""

from __future__ import annotations

import asyncio
import logging

import ray

from actors.stage import StageWorker
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.errors import PetrayError, TransientError
from petray.service.archive import verify_zip
from petray.service.shared_folder import copy_atomically, remove_task_files, result_present
from petray.task_files import TaskFiles
from petray.tasks import accept_result_callback, awaiting_result

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class DownloaderActor(StageWorker):
    stage = Stage.DOWNLOADING
    concurrency = 2

    _sweeping = False

    async def resume(self) -> int:
        taken = await super().resume()
        if not self._sweeping:
            self._sweeping = True
            self.background.spawn(self._sweep_forever())
        return taken

    async def _sweep_forever(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self.find_results)
            except Exception:
                logger.exception("result sweep failed; trying again later")
                found = []
            for task_id in found:
                await self.submit(task_id)
            await asyncio.sleep(self.settings.sweep_interval_s)

    def find_results(self) -> list[str]:
        """Move every task whose result lies in the shared folder on to downloading."""
        shared = self.settings.resolved_shared_dir
        with unit_of_work(self.sessions) as session:
            candidates = awaiting_result(session=session)
        found = []
        for task_id in candidates:
            if not result_present(shared, task_id):
                continue
            try:
                with unit_of_work(self.sessions) as session:
                    if accept_result_callback(task_id, session=session):
                        found.append(task_id)
            except PetrayError:
                continue  # deleted or moved on meanwhile
        if found:
            logger.info("found %d results in the shared folder without a callback", len(found))
        return found

    def handle(self, task_id: str) -> None:
        files = TaskFiles.of(self.settings, task_id)
        if not files.processed.is_file():
            raise TransientError("the result archive is not in the shared folder yet")
        copy_atomically(files.processed, files.result_archive)
        verify_zip(files.result_archive, max_uncompressed_bytes=self.settings.max_result_bytes)

    def committed(self, task_id: str) -> None:
        """The shared folder's copy goes only once the task has left downloading: removed
        before that commit, a Downloader killed in between restarted on a task whose result
        was nowhere it looks, and waited for it until its retry budget ran out."""
        remove_task_files(TaskFiles.of(self.settings, task_id).shared_dir, task_id)
