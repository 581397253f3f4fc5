"""DownloaderActor: the result archive from the shared folder to local storage, verified."""

from __future__ import annotations

import ray

from actors.stage import StageWorker
from petray.archive import verify_zip
from petray.domain import Stage
from petray.errors import TransientError
from petray.shared_folder import copy_atomically, remove_task_files, result_path


@ray.remote(num_cpus=0, max_restarts=-1)
class DownloaderActor(StageWorker):
    stage = Stage.DOWNLOADING
    concurrency = 2

    def handle(self, task_id: str) -> Stage | None:
        shared = self.settings.resolved_shared_dir
        source = result_path(shared, task_id)
        if not source.is_file():
            raise TransientError("the result archive is not in the shared folder yet")
        local = self.settings.work_dir / f"{task_id}.result.zip"
        copy_atomically(source, local)
        verify_zip(local, max_uncompressed_bytes=self.settings.max_result_bytes)
        remove_task_files(shared, task_id)
        return Stage.UNPACKING
