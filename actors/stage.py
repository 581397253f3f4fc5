"""The shape shared by the stage actors: a mailbox of task ids, one unit of work per task.

A stage handler does its work and returns; the pure runner (petray/stages/runner.py) commits
the move to the next stage, and only then does this shell tell the next actor. Transient
failures put the task in ``waiting`` and this shell arms the retry the runner committed;
permanent ones fail the task with their reason and are never retried in a loop.

Every actor heals itself (issue 8): whenever Ray (re)creates it — gateway start, ``ray.kill``,
a lost node — its constructor asks the actor to ``resume``, which takes up every task active or
waiting in its stages from the database and re-arms the retries at their committed times.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

from ray.util import metrics

from actors.runtime import Background, Dispatcher, current_actor_restarts, init_actor_process
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.retry import retry_policy_for
from petray.settings import Settings
from petray.stages.pipeline import STAGE_ACTORS, stages_of
from petray.stages.runner import Outcome, advance, run_once
from petray.tasks import runnable_in

logger = logging.getLogger(__name__)


class StageWorker:
    """Base of the stage actors. Subclasses set ``stage`` and implement ``handle``."""

    stage: ClassVar[Stage]
    concurrency: ClassVar[int] = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = init_actor_process(settings)
        self.dispatcher = Dispatcher()
        self.background = Background()
        self.policy = retry_policy_for(self.stage, settings)
        self._inflight: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._slots: asyncio.Semaphore | None = None
        self._processed = 0
        self._failed = 0
        self._restarted = current_actor_restarts() > 0
        self._rescanning = False
        # Async actors run their constructor inside the actor's event loop.
        self._loop = asyncio.get_running_loop()
        tags = {"stage": self.stage.value}
        self._m_tasks = metrics.Counter(
            "petray_stage_tasks", "Tasks handled by stage and outcome", ("stage", "outcome")
        )
        self._m_retries = metrics.Counter("petray_retries", "Transient failures", ("stage",))
        self._m_duration = metrics.Histogram(
            "petray_stage_seconds",
            "Time a stage spends on one task",
            boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
            tag_keys=("stage",),
        )
        self._m_duration.set_default_tags(tags)
        self._m_retries.set_default_tags(tags)
        # Runs on this actor's own loop as soon as the constructor returns, first thing in this
        # incarnation. Not a call through the actor's handle: while a restarted actor constructs,
        # the GCS still has it RESTARTING, and such a call can fail at once ("The actor is
        # restarting") — the restarted actor would then never take up its tasks.
        self.background.spawn(self.resume())

    def resumes(self) -> tuple[Stage, ...]:
        """The stages whose runnable tasks this actor takes up when it (re)starts (the
        pipeline table's stages of this actor, e.g. the Uploader's uploading and processing)."""
        return stages_of(STAGE_ACTORS[self.stage])

    # -- the mailbox ---------------------------------------------------------------------

    async def resume(self) -> int:
        """Take up every runnable task of this actor's stages; returns how many.

        Runs when the actor (re)starts, then every ``sweep_interval_s``: a message lost on its
        way (an actor that died while telling this one) costs at most one interval.
        """
        if not self._rescanning:
            self._rescanning = True
            self.background.spawn(self._rescan_forever())
        try:
            taken = await asyncio.to_thread(self._take_up)
        except Exception:
            # The database is away: the rescan tries again every sweep interval.
            logger.exception("%s cannot read its tasks yet", self.stage)
            return 0
        if taken:
            logger.info(
                "%s %s: took up %d tasks",
                self.stage,
                "restarted" if self._restarted else "started",
                taken,
            )
        return taken

    async def _rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                if taken := await asyncio.to_thread(self._take_up):
                    logger.warning("%s: took up %d unannounced tasks", self.stage, taken)
            except Exception:
                logger.exception("%s could not scan for its tasks", self.stage)

    def _take_up(self) -> int:
        """Schedule every runnable task nobody is working on or waiting for (thread-side)."""
        with unit_of_work(self.sessions) as session:
            runnable = runnable_in(self.resumes(), session=session)
        now = datetime.now(UTC)
        taken = 0
        for task_id, next_attempt_at in runnable:
            if self.tracks(task_id):
                continue
            delay = (next_attempt_at - now).total_seconds() if next_attempt_at else 0.0
            self._loop.call_soon_threadsafe(self._schedule, task_id, max(delay, 0.0))
            taken += 1
        return taken

    def tracks(self, task_id: str) -> bool:
        """This actor is working on the task or has a timer for it."""
        return task_id in self._inflight or task_id in self._timers

    def _schedule(self, task_id: str, delay: float) -> None:
        """One pending timer per task: a newer schedule replaces the older one."""
        old = self._timers.pop(task_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[task_id] = loop.call_later(delay, self._fire, task_id)

    def _fire(self, task_id: str) -> None:
        self._timers.pop(task_id, None)
        self.background.spawn(self.submit(task_id))

    async def submit(self, task_id: str) -> None:
        timer = self._timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()  # told directly (e.g. an operator's retry): do not wait it out
        if task_id in self._inflight:
            return
        self._inflight.add(task_id)
        try:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.concurrency)
            async with self._slots:
                outcome = await asyncio.to_thread(self._run, task_id)
        finally:
            self._inflight.discard(task_id)
        if outcome.advance_to is not None:
            self.dispatcher.submit(outcome.advance_to, task_id)
        elif outcome.retry_in is not None:
            self._schedule(task_id, outcome.retry_in)

    async def status(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "backlog": len(self._inflight) + len(self._timers),
            "retrying": len(self._timers),
            "processed": self._processed,
            "failed": self._failed,
            "restarted": self._restarted,
        }

    # -- one unit of work ----------------------------------------------------------------

    def handle(self, task_id: str) -> Stage | None:
        """Do this stage's work; return where the task goes instead of the pipeline table's
        next stage, or None to follow the table."""
        raise NotImplementedError

    def _run(self, task_id: str) -> Outcome:
        started = time.monotonic()
        outcome = run_once(
            task_id,
            stage=self.stage,
            handle=self.handle,
            sessions=self.sessions,
            policy=self.policy,
            on_advance=lambda task, target, session: self.on_advance(task, target, session=session),
        )
        if outcome.retry_in is not None:
            self._m_retries.inc()
        elif outcome.failed:
            self._failed += 1
            self._m_tasks.inc(tags={"stage": self.stage.value, "outcome": "failed"})
        elif outcome.advance_to is not None:
            self.committed(task_id)
            self._processed += 1
            self._m_tasks.inc(tags={"stage": self.stage.value, "outcome": "ok"})
            self._m_duration.observe(time.monotonic() - started)
        return outcome

    def committed(self, task_id: str) -> None:
        """After the move to the next stage is committed: let go of what the stage's work
        kept until then (nothing by default)."""

    def on_advance(self, task: Any, target: Stage, *, session: Any) -> None:
        """Commit the move to ``target`` (subclasses may record more in the same transaction)."""
        advance(task, target, session)
