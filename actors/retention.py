"""RetentionActor: applies the retention policy every ``retention_interval_s`` (issue 10).

The rules and the purge itself are ``petray.site.retention``; this actor only keeps the timer. Like
every actor it heals itself: its constructor schedules the loop, so a restart resumes it, and a
purge cut short by a crash is completed at the next run (claims are committed per task).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import UTC, datetime
from typing import Any

import ray

from actors.runtime import init_actor_process
from petray.db.engine import unit_of_work
from petray.settings import Settings
from petray.site import retention
from petray.site.retention import RetentionPolicy
from petray.task_files import TaskFiles

logger = logging.getLogger(__name__)

# The first run waits a little: a gateway that just started has better things to do.
FIRST_RUN_DELAY_S = 60.0


@ray.remote(num_cpus=0, max_restarts=-1)
class RetentionActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions = init_actor_process(settings)
        # Async actors run their constructor inside the actor's event loop.
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(min(FIRST_RUN_DELAY_S, self._settings.retention_interval_s))
        while True:
            try:
                await asyncio.to_thread(self.purge)
            except Exception:
                logger.exception("retention run failed; trying again at the next interval")
            await asyncio.sleep(self._settings.retention_interval_s)

    def purge(self, dry_run: bool = False) -> dict[str, Any]:
        settings = self._settings
        with unit_of_work(self._sessions) as session:
            policy = RetentionPolicy.load(settings, session=session)
        report = retention.run(
            self._sessions,
            policy,
            lambda task_id: TaskFiles.of(settings, task_id),
            now=datetime.now(UTC),
            free_bytes=lambda: shutil.disk_usage(settings.home).free,
            dry_run=dry_run,
        )
        return report.as_dict()
