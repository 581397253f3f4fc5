"""CompilatorActor: owns the open series assemblies and decides when each task is ready.

An asyncio actor: each assembly has one timer, rescheduled by every new instance, so readiness
is decided by events rather than a polling loop.

It shares SQLite's single write lock with ingest, so instance messages are not committed one by
one: they are collected for at most BATCH_WINDOW_S and routed, assigned and (when complete)
moved on in one transaction. A complete series is still dispatched within that window of its
last slice. The site's compilator thresholds are re-read every CONFIG_TTL_S, not per instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.util import metrics
from sqlalchemy.orm import Session

from actors.runtime import Dispatcher, init_actor_process
from petray.assemblies import assign, load_config, open_task, restore
from petray.compilator import Compilation, CompilatorConfig, SeriesAssembly, Verdict
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.ingest import ReceivedInstance
from petray.settings import Settings
from petray.tasks import fail, get_task, move_to

logger = logging.getLogger(__name__)

# Long enough to gather a burst of C-STOREs into one commit, short against the 1 s budget from
# last slice to dispatch (issue 2).
BATCH_WINDOW_S = 0.02
# A batch this large is committed at once rather than waiting out the window.
MAX_BATCH = 500
# Staff edit the thresholds in the console; a few seconds' delay before they apply is fine.
CONFIG_TTL_S = 5.0
# After a failed batch the state is rebuilt from the database, which still holds the batch's
# instances unassigned; this spaces out retries while the database is unavailable.
RETRY_DELAY_S = 1.0
MIN_RECHECK_S = 0.05
# Instance ids already assigned, remembered so that one both restored from the database and
# still in flight as a message is not taken for a re-send (which would open a second task).
REMEMBERED_INSTANCES = 200_000


@ray.remote(num_cpus=0, max_restarts=-1)
class CompilatorActor:
    def __init__(self, settings: Settings) -> None:
        self._sessions = init_actor_process(settings)
        self._compilation = Compilation()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._dispatcher = Dispatcher()
        self._dispatched = 0
        self._aborted = 0
        self._pending: list[ReceivedInstance] = []
        self._undecided: set[str] = set()
        self._assigned: dict[int, None] = {}  # insertion-ordered: the oldest are forgotten first
        self._flush_handle: asyncio.TimerHandle | None = None
        # Set after a failed commit, until the state is rebuilt from the database: the in-memory
        # assemblies may hold what was rolled back, so nothing is decided from them meanwhile.
        self._broken = False
        self._config: CompilatorConfig | None = None
        self._config_read_at = 0.0
        self._m_outcome = metrics.Counter(
            "petray_compilations", "Series assemblies by outcome", ("outcome",)
        )

    async def start(self) -> int:
        """Rebuild the open assemblies from the database; returns how many are open."""
        self._restore()
        return len(self._compilation)

    async def add_instance(self, instance: ReceivedInstance) -> None:
        await self.add_instances([instance])

    async def add_instances(self, instances: list[ReceivedInstance]) -> None:
        self._pending.extend(instances)
        if self._broken:
            return
        if len(self._pending) >= MAX_BATCH:
            self._flush()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(BATCH_WINDOW_S, self._flush)

    async def status(self) -> dict[str, Any]:
        return {
            "open": len(self._compilation),
            "dispatched": self._dispatched,
            "aborted": self._aborted,
            "backlog": len(self._compilation),
            "pending": len(self._pending),
        }

    def _rebuild_later(self) -> None:
        self._broken = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        asyncio.get_running_loop().call_later(RETRY_DELAY_S, self._rebuild)

    def _rebuild(self) -> None:
        try:
            self._restore()
        except Exception:
            logger.exception("compilator could not rebuild its state; retrying")
            self._rebuild_later()

    def _restore(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._compilation = Compilation()
        self._pending.clear()
        with unit_of_work(self._sessions) as session:
            assemblies, pending = restore(session=session)
        for assembly in assemblies:
            self._compilation.open(assembly)
        self._undecided = {assembly.task_id for assembly in assemblies}
        self._pending.extend(pending)
        self._broken = False
        logger.info(
            "compilator restored %d open tasks, %d pending instances", len(assemblies), len(pending)
        )
        if assemblies or pending:
            self._flush()

    def _config_now(self, session: Session | None = None) -> CompilatorConfig:
        now = time.monotonic()
        if self._config is None or now - self._config_read_at > CONFIG_TTL_S:
            if session is not None:
                self._config = load_config(session=session)
            else:
                with unit_of_work(self._sessions) as own:
                    self._config = load_config(session=own)
            self._config_read_at = now
        return self._config

    def _flush(self) -> None:
        """Route, assign and decide every collected instance in one transaction."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        touched: dict[str, SeriesAssembly] = {}
        closed: list[tuple[SeriesAssembly, str]] = []
        try:
            with unit_of_work(self._sessions) as session:
                now = time.time()
                members: dict[str, list[int]] = {}
                for instance in batch:
                    if instance.instance_pk in self._assigned:
                        continue
                    assembly = self._compilation.route(instance)
                    if assembly is None:
                        assembly = open_task(instance, session=session, now=now)
                        self._compilation.open(assembly)
                    assembly.add(instance, now)
                    members.setdefault(assembly.task_id, []).append(instance.instance_pk)
                    touched[assembly.task_id] = assembly
                for task_id, instance_pks in members.items():
                    assign(instance_pks, touched[task_id], session=session)
                # Assemblies restored from the database get their first decision here too.
                for task_id in self._undecided:
                    restored = self._compilation.get(task_id)
                    if restored is not None:
                        touched.setdefault(task_id, restored)
                config = self._config_now(session)
                for assembly in touched.values():
                    failure = self._decide(assembly, config, now)
                    if failure is not None:
                        self._close_in(assembly, failure, session=session)
                        closed.append((assembly, failure))
        except Exception:
            logger.exception("compilator batch of %d instances failed; rebuilding", len(batch))
            self._rebuild_later()
            return
        self._undecided.clear()
        for instance in batch:
            self._assigned[instance.instance_pk] = None
        while len(self._assigned) > REMEMBERED_INSTANCES:
            del self._assigned[next(iter(self._assigned))]
        for assembly, failure in closed:
            self._closed(assembly, failure)

    def _decide(self, assembly: SeriesAssembly, config: CompilatorConfig, now: float) -> str | None:
        """None while the assembly stays open (recheck timer set), else "" or why it aborts."""
        timer = self._timers.pop(assembly.task_id, None)
        if timer is not None:
            timer.cancel()
        decision = assembly.decide(config, now)
        if decision.verdict == Verdict.READY:
            return ""
        if decision.verdict == Verdict.ABORT:
            return decision.reason
        if decision.recheck_in is not None:
            loop = asyncio.get_running_loop()
            self._timers[assembly.task_id] = loop.call_later(
                max(decision.recheck_in, MIN_RECHECK_S), self._evaluate, assembly.task_id
            )
        return None

    def _evaluate(self, task_id: str) -> None:
        """A recheck timer fired: decide again without a new instance."""
        self._timers.pop(task_id, None)
        if self._broken:
            return
        assembly = self._compilation.get(task_id)
        if assembly is None:
            return
        try:
            failure = self._decide(assembly, self._config_now(), time.time())
            if failure is None:
                return
            with unit_of_work(self._sessions) as session:
                self._close_in(assembly, failure, session=session)
        except Exception:
            logger.exception("compilator recheck of task %s failed; rebuilding", task_id)
            self._rebuild_later()
            return
        self._closed(assembly, failure)

    def _close_in(self, assembly: SeriesAssembly, failure: str, *, session: Session) -> None:
        self._compilation.close(assembly.task_id)
        task = get_task(assembly.task_id, session=session, lock=True)
        task.images = assembly.images
        if failure:
            fail(task, failure, session=session)
        else:
            move_to(task, Stage.VALIDATING, session=session)

    def _closed(self, assembly: SeriesAssembly, failure: str) -> None:
        """After the commit: count it and tell the next stage."""
        if failure:
            self._aborted += 1
            self._m_outcome.inc(tags={"outcome": "aborted"})
            logger.warning("task %s aborted: %s", assembly.task_id, failure)
            return
        self._dispatched += 1
        self._m_outcome.inc(tags={"outcome": "dispatched"})
        self._dispatcher.submit(Stage.VALIDATING, assembly.task_id)
