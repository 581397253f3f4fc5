"""CompilatorActor: owns the open series assemblies and decides when each task is ready.

An asyncio actor: each assembly has one timer, rescheduled by every new instance, so readiness
is decided by events rather than a polling loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.util import metrics

from actors.runtime import Dispatcher, init_actor_process
from petray.assemblies import assign, load_config, open_task, restore
from petray.compilator import Compilation, SeriesAssembly, Verdict
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.ingest import ReceivedInstance
from petray.settings import Settings
from petray.tasks import fail, get_task, move_to

logger = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1)
class CompilatorActor:
    def __init__(self, settings: Settings) -> None:
        self._sessions = init_actor_process(settings)
        self._compilation = Compilation()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._dispatcher = Dispatcher()
        self._dispatched = 0
        self._aborted = 0
        self._m_outcome = metrics.Counter(
            "petray_compilations", "Series assemblies by outcome", ("outcome",)
        )

    async def start(self) -> int:
        """Rebuild the open assemblies from the database; returns how many are open."""
        with unit_of_work(self._sessions) as session:
            assemblies, pending = restore(session=session)
        for assembly in assemblies:
            self._compilation.open(assembly)
            self._evaluate(assembly.task_id)
        for instance in pending:
            self._add(instance)
        logger.info(
            "compilator restored %d open tasks, %d pending instances", len(assemblies), len(pending)
        )
        return len(self._compilation)

    async def add_instance(self, instance: ReceivedInstance) -> None:
        self._add(instance)

    async def status(self) -> dict[str, Any]:
        return {
            "open": len(self._compilation),
            "dispatched": self._dispatched,
            "aborted": self._aborted,
            "backlog": len(self._compilation),
        }

    def _add(self, instance: ReceivedInstance) -> None:
        now = time.time()
        with unit_of_work(self._sessions) as session:
            assembly = self._compilation.route(instance)
            if assembly is None:
                assembly = open_task(instance, session=session, now=now)
                self._compilation.open(assembly)
            assembly.add(instance, now)
            assign(instance, assembly, session=session)
        self._evaluate(assembly.task_id)

    def _evaluate(self, task_id: str) -> None:
        assembly = self._compilation.get(task_id)
        if assembly is None:
            return
        timer = self._timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()
        with unit_of_work(self._sessions) as session:
            config = load_config(session=session)
        decision = assembly.decide(config, time.time())
        if decision.verdict == Verdict.READY:
            self._close(assembly, failure="")
        elif decision.verdict == Verdict.ABORT:
            self._close(assembly, failure=decision.reason)
        elif decision.recheck_in is not None:
            loop = asyncio.get_running_loop()
            self._timers[task_id] = loop.call_later(
                max(decision.recheck_in, 0.05), self._evaluate, task_id
            )

    def _close(self, assembly: SeriesAssembly, *, failure: str) -> None:
        self._compilation.close(assembly.task_id)
        with unit_of_work(self._sessions) as session:
            task = get_task(assembly.task_id, session=session, lock=True)
            task.images = assembly.images
            if failure:
                fail(task, failure, session=session)
            else:
                move_to(task, Stage.VALIDATING, session=session)
        if failure:
            self._aborted += 1
            self._m_outcome.inc(tags={"outcome": "aborted"})
            logger.warning("task %s aborted: %s", assembly.task_id, failure)
            return
        self._dispatched += 1
        self._m_outcome.inc(tags={"outcome": "dispatched"})
        self._dispatcher.submit(Stage.VALIDATING, assembly.task_id)
