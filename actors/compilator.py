"""CompilatorActor: owns the open series assemblies and decides when each task is ready.

The rules are petray/stages/compile.py's ``Compiler``; this actor batches the messages, keeps
one timer per open assembly (rescheduled by every new instance, so readiness is decided by
events rather than a polling loop) and tells the Validator after each commit.

It shares SQLite's single write lock with ingest, so instance messages are not committed one by
one: they are collected for at most BATCH_WINDOW_S and routed, assigned and (when complete)
moved on in one transaction. A complete series is still dispatched within that window of its
last slice. The site's compilator thresholds are re-read every CONFIG_TTL_S, not per instance.

It also builds each series' volume while the slices arrive (issue 13, petray/stages/prebuild.py),
on one thread of its own so that its mailbox never waits on a file. When the series is ready
the volume goes into the object store, and the Packer takes it from there zero-copy
(``take_volume``). A head start only: whatever is lost with a restart, the Packer reads from
the files.

Acknowledged means owned (issue 8): whenever the actor (re)starts it rebuilds the open
assemblies and the unclaimed instances from the database before it routes anything, and a
sweep every ``sweep_interval_s`` takes up any instance left unclaimed (a message lost with a
crashed actor) and drops assemblies whose task was deleted or cancelled. Whether an instance is
still unclaimed is always asked of the database, never of a memory keyed by reusable row ids.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import ray
from ray.util import metrics
from sqlalchemy.orm import Session

from actors.plasma import release_pages
from actors.runtime import (
    Background,
    Dispatcher,
    current_actor_restarts,
    init_actor_process,
    restore_priority,
)
from petray.db.engine import unit_of_work
from petray.dicom.ingest import ReceivedInstance
from petray.domain import Stage
from petray.settings import Settings
from petray.stages.assemblies import compiling, load_config, restore, unassigned
from petray.stages.compilator import CompilatorConfig, SeriesAssembly
from petray.stages.compile import BatchOutcome, Compiler
from petray.stages.prebuild import PreparedVolume, VolumeAssembler

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
# A volume built on arrival that no Packer took by then is dropped (its task failed validation,
# was deleted, or the Packer read the files).
PREPARED_TTL_S = 600.0


# The volume thread's niceness: building ahead must not slow the Store SCP processes down.
VOLUME_THREAD_NICE = 10


def _yield_to_ingest() -> None:
    """Lower this thread's CPU priority (Linux schedules threads on their own): the slices are
    read when the Store SCP leaves a core idle, and the backlog is caught up after the last."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), VOLUME_THREAD_NICE)
    except OSError:
        logger.info("the volume thread runs at the actor's priority")


@ray.remote(num_cpus=0, max_restarts=-1)
class CompilatorActor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions = init_actor_process(settings)
        self._compiler = Compiler()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._dispatcher = Dispatcher()
        self._background = Background()
        self._dispatched = 0
        self._aborted = 0
        self._pending: list[ReceivedInstance] = []
        self._restored = False
        self._sweeping = False
        self._flush_handle: asyncio.TimerHandle | None = None
        # Set after a failed commit, until the state is rebuilt from the database: the in-memory
        # assemblies may hold what was rolled back, so nothing is decided from them meanwhile.
        self._broken = False
        self._config: CompilatorConfig | None = None
        self._config_read_at = 0.0
        # Builders are only touched on this one thread, in the order the batches committed.
        self._volumes = VolumeAssembler(settings.prebuild_memory_mb * 2**20)
        self._volume_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="petray-volume", initializer=_yield_to_ingest
        )
        self._prepared: dict[str, tuple[float, Future[PreparedVolume | None]]] = {}
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
            # On the event loop's thread, where every batch runs: a batch holds SQLite's one
            # write lock until its commit, and at Ray's niceness a busy gateway preempts it
            # there while every Store SCP insert waits for the lock.
            restore_priority("Compilator")
            try:
                self._restore()
            except Exception:
                logger.exception("compilator could not rebuild its state; retrying")
                self._rebuild_later()
        if not self._sweeping:
            self._sweeping = True
            self._background.spawn(self._sweep_forever())
        return len(self._compiler)

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

    async def take_volume(self, task_id: str) -> PreparedVolume | None:
        """The ready task's volume, once (None when it was not built on arrival).

        Its ref goes with it: the Packer borrows the object and it lives as long as the Packer
        holds it."""
        entry = self._prepared.pop(task_id, None)
        if entry is None:
            return None
        try:
            return await asyncio.wrap_future(entry[1])
        except Exception:
            logger.exception("task %s: the volume built on arrival is lost", task_id)
            return None

    async def status(self) -> dict[str, Any]:
        return {
            "open": len(self._compiler),
            "dispatched": self._dispatched,
            "aborted": self._aborted,
            "backlog": len(self._compiler),
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
            live = compiling(self._compiler.open_task_ids(), session=session)
            orphans = unassigned(session=session, received_before=before)
        gone = self._compiler.forget_gone(live)
        self._cancel_timers(gone)
        for task_id in gone:
            self._volume_thread.submit(self._volumes.drop, task_id)
        stale = time.monotonic() - PREPARED_TTL_S
        for task_id in [t for t, (at, _) in self._prepared.items() if at < stale]:
            self._prepared.pop(task_id)
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
        self._pending.clear()
        with unit_of_work(self._sessions) as session:
            assemblies, pending = restore(session=session)
        self._compiler.restore(assemblies)
        self._volume_thread.submit(self._volumes.clear)
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
        try:
            with unit_of_work(self._sessions) as session:
                outcome = self._compiler.take(
                    batch, session=session, config=self._config_now(session), now=time.time()
                )
        except Exception:
            logger.exception("compilator batch of %d instances failed; rebuilding", len(batch))
            self._rebuild_later()
            return
        self._after(outcome)

    def _after(self, outcome: BatchOutcome) -> None:
        for task_id, instances in outcome.joined.items():
            self._volume_thread.submit(
                self._volumes.feed,
                task_id,
                [instance.path for instance in instances],
                expected=instances[0].number_of_slices,
                first=task_id in outcome.opened,
                stored=[instance.stored for instance in instances],
            )
        for task_id in outcome.gone:
            self._volume_thread.submit(self._volumes.drop, task_id)
        self._cancel_timers(outcome.settled)
        loop = asyncio.get_running_loop()
        for task_id, delay in outcome.recheck.items():
            self._timers[task_id] = loop.call_later(
                max(delay, MIN_RECHECK_S), self._evaluate, task_id
            )
        for assembly, failure in outcome.closed:
            self._closed(assembly, failure)

    def _cancel_timers(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            timer = self._timers.pop(task_id, None)
            if timer is not None:
                timer.cancel()

    def _evaluate(self, task_id: str) -> None:
        """A recheck timer fired: decide again without a new instance."""
        self._timers.pop(task_id, None)
        if self._broken:
            return
        assembly = self._compiler.compilation.get(task_id)
        if assembly is None:
            return
        outcome = BatchOutcome(settled=[task_id])
        try:
            failure, recheck_in = self._compiler.decide(assembly, self._config_now(), time.time())
            if failure is None:
                if recheck_in is not None:
                    outcome.recheck[task_id] = recheck_in
            else:
                with unit_of_work(self._sessions) as session:
                    if self._compiler.close_in(assembly, failure, session=session):
                        outcome.closed.append((assembly, failure))
        except Exception:
            logger.exception("compilator recheck of task %s failed; rebuilding", task_id)
            self._rebuild_later()
            return
        self._after(outcome)

    def _closed(self, assembly: SeriesAssembly, failure: str) -> None:
        """After the commit: count it and tell the next stage."""
        if failure:
            self._volume_thread.submit(self._volumes.drop, assembly.task_id)
            self._aborted += 1
            self._m_outcome.inc(tags={"outcome": "aborted"})
            logger.warning("task %s aborted: %s", assembly.task_id, failure)
            return
        self._dispatched += 1
        self._m_outcome.inc(tags={"outcome": "dispatched"})
        self._compiler.dispatched(assembly, time.time())
        prepared = self._volume_thread.submit(self._prepare, assembly.task_id)
        self._prepared[assembly.task_id] = (time.monotonic(), prepared)
        self._dispatcher.submit(Stage.VALIDATING, assembly.task_id)

    def _prepare(self, task_id: str) -> PreparedVolume | None:
        """On the volume thread, after every slice the task claimed: the volume into the object
        store (its one copy there); this process lets go of its own copy and the put's pages."""
        volume = self._volumes.finish(task_id)
        if volume is None:
            return None
        ref = ray.put(volume.data)
        release_pages(ray.get(ref))  # written by the put, never read here
        return PreparedVolume.of(volume, ref)
