"""CompilatorActor: owns the open series assemblies and decides when each task is ready.

An asyncio actor: each assembly has one timer, rescheduled by every new instance, so readiness
is decided by events rather than a polling loop.

It shares SQLite's single write lock with ingest, so instance messages are not committed one by
one: they are collected for at most BATCH_WINDOW_S and routed, assigned and (when complete)
moved on in one transaction. A complete series is still dispatched within that window of its
last slice. The site's compilator thresholds are re-read every CONFIG_TTL_S, not per instance.

Acknowledged means owned (issue 8): whenever the actor (re)starts it rebuilds the open
assemblies and the unclaimed instances from the database before it routes anything, and a
sweep every ``sweep_interval_s`` takes up any instance left unclaimed (a message lost with a
crashed actor) and drops assemblies whose task was deleted or cancelled. Whether an instance is
still unclaimed is always asked of the database, never of a memory keyed by reusable row ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import ray
from ray.util import metrics
from sqlalchemy.orm import Session

from actors.runtime import Background, Dispatcher, current_actor_restarts, init_actor_process
from petray.db.engine import unit_of_work
from petray.db.models import Task
from petray.dicom.ingest import ReceivedInstance
from petray.domain import Stage, State
from petray.settings import Settings
from petray.stages.assemblies import (
    assign,
    compiling,
    load_config,
    open_task,
    reopen_or_fail,
    restore,
    still_unassigned,
    unassigned,
)
from petray.stages.compilator import (
    Compilation,
    CompilatorConfig,
    SeriesAssembly,
    SeriesKey,
    Verdict,
)
from petray.tasks import add_note, fail, move_to

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
# The sweep leaves alone instances younger than this: their message is normally on its way.
SWEEP_GRACE_S = 5.0
# Assemblies dispatched on their NumberOfSlices are remembered this long (and this many per
# series), so that more slices of the same series arriving later are recognised as such.
DISPATCHED_MEMORY_S = 3600.0
DISPATCHED_PER_SERIES = 4


@ray.remote(num_cpus=0, max_restarts=-1)
class CompilatorActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions = init_actor_process(settings)
        self._compilation = Compilation()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._dispatcher = Dispatcher()
        self._background = Background()
        self._dispatched = 0
        self._aborted = 0
        self._pending: list[ReceivedInstance] = []
        self._undecided: set[str] = set()
        self._dispatched_on_count: dict[SeriesKey, deque[tuple[float, SeriesAssembly]]] = {}
        self._restored = False
        self._sweeping = False
        self._flush_handle: asyncio.TimerHandle | None = None
        # Set after a failed commit, until the state is rebuilt from the database: the in-memory
        # assemblies may hold what was rolled back, so nothing is decided from them meanwhile.
        self._broken = False
        self._config: CompilatorConfig | None = None
        self._config_read_at = 0.0
        self._m_outcome = metrics.Counter(
            "petray_compilations", "Series assemblies by outcome", ("outcome",)
        )
        # Scheduled on the actor's loop before any message can be (see StageWorker): a restarted
        # actor rebuilds before anything else, and never through a call to its own handle,
        # which can fail while the GCS still has the actor RESTARTING.
        self._background.spawn(self.start())

    async def start(self) -> int:
        """Rebuild the open assemblies from the database (once); returns how many are open."""
        if not self._restored:
            try:
                self._restore()
            except Exception:
                logger.exception("compilator could not rebuild its state; retrying")
                self._rebuild_later()
        if not self._sweeping:
            self._sweeping = True
            self._background.spawn(self._sweep_forever())
        return len(self._compilation)

    async def add_instance(self, instance: ReceivedInstance) -> None:
        await self.add_instances([instance])

    async def add_instances(self, instances: list[ReceivedInstance]) -> None:
        self._pending.extend(instances)
        if not self._restored and not self._broken:
            await self.start()  # a message that overtook the restart's own start call
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
            "restarted": current_actor_restarts() > 0,
        }

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval_s)
            if self._broken or not self._restored:
                continue
            try:
                self._sweep()
            except Exception:
                logger.exception("compilator sweep failed; rebuilding")
                self._rebuild_later()

    def _sweep(self) -> None:
        """Take up instances nobody claimed, forget assemblies whose task went away."""
        before = datetime.now(UTC) - timedelta(seconds=SWEEP_GRACE_S)
        with unit_of_work(self._sessions) as session:
            live = compiling([a.task_id for a in self._compilation], session=session)
            orphans = unassigned(session=session, received_before=before)
        self._forget_gone(live)
        if orphans:
            logger.warning("sweep found %d unclaimed instances; assigning them", len(orphans))
            self._pending.extend(orphans)
            self._flush()

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
        self._restored = True
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
                batch = still_unassigned(batch, session=session)
                if batch:
                    # Deleted or cancelled while open: its instances must not join it.
                    self._forget_gone(
                        compiling([a.task_id for a in self._compilation], session=session)
                    )
                members: dict[str, list[int]] = {}
                for instance in batch:
                    assembly = self._compilation.route(instance)
                    if assembly is None:
                        assembly = self._beyond_declared(instance, session=session, now=now)
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
                    if failure is not None and self._close_in(assembly, failure, session=session):
                        closed.append((assembly, failure))
        except Exception:
            logger.exception("compilator batch of %d instances failed; rebuilding", len(batch))
            self._rebuild_later()
            return
        self._undecided.clear()
        for assembly, failure in closed:
            self._closed(assembly, failure)

    def _forget_gone(self, live: set[str]) -> None:
        for assembly in self._compilation:
            if assembly.task_id not in live:
                logger.info("task %s is no longer compiling; forgetting it", assembly.task_id)
                self._compilation.close(assembly.task_id)
                timer = self._timers.pop(assembly.task_id, None)
                if timer is not None:
                    timer.cancel()

    def _beyond_declared(
        self, instance: ReceivedInstance, *, session: Session, now: float
    ) -> SeriesAssembly | None:
        """The assembly for a slice of a series already dispatched on its NumberOfSlices.

        The declared count was a lie (issue 8): the dispatched task takes the slice back if it
        has not left the gateway yet; otherwise it fails, and so does the task that gathers the
        rest, each naming the contradiction. None when the instance is not such a slice.
        """
        recent = self._dispatched_on_count.get((instance.series_pk, instance.calling_ae))
        while recent and now - recent[0][0] > DISPATCHED_MEMORY_S:
            recent.popleft()
        if not recent:
            return None
        earlier = next(
            (a for _, a in reversed(recent) if instance.sop_instance_uid not in a.sop_uids), None
        )
        if earlier is None:
            return None  # a re-send of slices already dispatched: a new task, as always
        recent.remove(next(item for item in recent if item[1] is earlier))
        note = (
            f"more images arrived than NumberOfSlices ({earlier.declared}) said, after the "
            "series was dispatched"
        )
        if reopen_or_fail(
            earlier.task_id, f"{note}; reassembled by slice positions", session=session
        ):
            earlier.contradict(f"{note}; the series was reassembled by slice positions")
            self._compilation.open(earlier)
            logger.warning("task %s reopened: %s", earlier.task_id, note)
            return earlier
        rest = open_task(instance, session=session, now=now)
        rest.contradict(note)
        rest.doomed = (
            f"{note} (task {earlier.task_id} had already left the gateway with "
            f"{earlier.images} images): correct the series and send it again"
        )
        self._compilation.open(rest)
        logger.warning("task %s: %s; failing the rest", earlier.task_id, note)
        return rest

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
                if not self._close_in(assembly, failure, session=session):
                    return
        except Exception:
            logger.exception("compilator recheck of task %s failed; rebuilding", task_id)
            self._rebuild_later()
            return
        self._closed(assembly, failure)

    def _close_in(self, assembly: SeriesAssembly, failure: str, *, session: Session) -> bool:
        """Commit the assembly's end; False when its task was deleted or cancelled meanwhile."""
        self._compilation.close(assembly.task_id)
        task = session.get(Task, assembly.task_id, with_for_update=True)
        if task is None or (task.stage, task.state) != (Stage.COMPILING, State.ACTIVE):
            return False
        task.images = assembly.images
        if assembly.contradiction:
            add_note(task, assembly.contradiction)
        if failure:
            fail(task, failure, session=session)
        else:
            move_to(task, Stage.VALIDATING, session=session)
        return True

    def _closed(self, assembly: SeriesAssembly, failure: str) -> None:
        """After the commit: count it and tell the next stage."""
        if failure:
            self._aborted += 1
            self._m_outcome.inc(tags={"outcome": "aborted"})
            logger.warning("task %s aborted: %s", assembly.task_id, failure)
            return
        self._dispatched += 1
        self._m_outcome.inc(tags={"outcome": "dispatched"})
        if assembly.expected is not None:
            recent = self._dispatched_on_count.setdefault(
                assembly.key, deque(maxlen=DISPATCHED_PER_SERIES)
            )
            recent.append((time.time(), assembly))
        self._dispatcher.submit(Stage.VALIDATING, assembly.task_id)
