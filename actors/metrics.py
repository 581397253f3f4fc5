"""MetricsActor: sets the gauges Prometheus scrapes (tasks by stage and state, oldest open and
waiting task, free disk, Store SCP associations open) every few seconds (issue 10).

Counters are incremented where things happen (StoreScp, StoreScu); a gauge is a reading of
state, so one small actor takes it from the database and the SCP on a timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.util import metrics

from actors.names import NAMESPACE, STORE_SCP
from actors.runtime import init_actor_process
from actors.store_scp import store_scp_siblings
from petray.db.engine import unit_of_work
from petray.settings import Settings
from petray.site.gauges import GaugeSnapshot, take_snapshot

logger = logging.getLogger(__name__)

# Prometheus scrapes every 15 s by default (deploy/prometheus.yml); a reading every 5 s keeps
# gauges at most one scrape behind for the price of three small queries.
REFRESH_S = 5.0
SCP_STATUS_TIMEOUT_S = 2.0


@ray.remote(num_cpus=0, max_restarts=-1)
class MetricsActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions = init_actor_process(settings)
        self._tasks = metrics.Gauge(
            "petray_tasks", "Tasks by stage and state", tag_keys=("stage", "state")
        )
        self._oldest_open = metrics.Gauge(
            "petray_oldest_open_task_seconds", "Age of the oldest unfinished task"
        )
        self._oldest_waiting = metrics.Gauge(
            "petray_oldest_waiting_task_seconds",
            "Age of the oldest task waiting for an automatic retry",
        )
        self._free_disk = metrics.Gauge(
            "petray_free_disk_bytes", "Free bytes on the file system of PETRAY_HOME"
        )
        self._associations = metrics.Gauge(
            "petray_scp_associations_open", "DICOM associations the Store SCP holds open"
        )
        self._seen: set[tuple[str, str]] = set()
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("could not refresh the metrics gauges")
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> dict[str, Any]:
        snapshot = await asyncio.to_thread(self._snapshot)
        self._set(snapshot)
        associations = await self._scp_associations()
        if associations is not None:
            self._associations.set(associations)
        return {"tasks": len(snapshot.tasks), "associations": associations}

    def _snapshot(self) -> GaugeSnapshot:
        with unit_of_work(self._sessions) as session:
            return take_snapshot(self._settings.home, session=session)

    def _set(self, snapshot: GaugeSnapshot) -> None:
        # A (stage, state) pair that emptied must read 0, not its last count.
        for key in self._seen - snapshot.tasks.keys():
            self._tasks.set(0, tags={"stage": key[0], "state": key[1]})
        for (stage, state), count in snapshot.tasks.items():
            self._tasks.set(count, tags={"stage": stage, "state": state})
        self._seen |= snapshot.tasks.keys()
        self._oldest_open.set(snapshot.oldest_open_task_s)
        self._oldest_waiting.set(snapshot.oldest_waiting_task_s)
        self._free_disk.set(snapshot.free_disk_bytes)

    async def _scp_associations(self) -> int | None:
        """Open associations over every Store SCP process sharing the port."""
        try:
            names = [STORE_SCP, *await asyncio.to_thread(store_scp_siblings)]
            statuses: list[dict[str, Any]] = await asyncio.wait_for(
                asyncio.gather(
                    *(ray.get_actor(n, namespace=NAMESPACE).status.remote() for n in names)
                ),
                SCP_STATUS_TIMEOUT_S,
            )
        except Exception:
            return None  # not started yet, or restarting: keep the last reading
        return sum(int(status.get("open_associations", 0)) for status in statuses)
