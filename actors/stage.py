"""The shape shared by the stage actors: a mailbox of task ids, one unit of work per task.

A stage handler does its work and returns; this shell commits the move to the next stage and
only then tells the next actor. Transient failures put the task in ``waiting`` and retry with
capped backoff; permanent ones fail the task with their reason and are never retried in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from ray.util import metrics

from actors.runtime import Dispatcher, init_actor_process
from petray.db.engine import unit_of_work
from petray.domain import Stage, State, next_stage
from petray.errors import PermanentError, TransientError
from petray.retry import Backoff
from petray.settings import Settings
from petray.tasks import fail, get_task, move_to, wait

logger = logging.getLogger(__name__)

RUNNABLE_STATES = (State.ACTIVE.value, State.WAITING.value)


@dataclass(frozen=True)
class Outcome:
    advance_to: Stage | None = None
    retry_in: float | None = None


class StageWorker:
    """Base of the stage actors. Subclasses set ``stage`` and implement ``handle``."""

    stage: ClassVar[Stage]
    concurrency: ClassVar[int] = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions = init_actor_process(settings)
        self.dispatcher = Dispatcher()
        self.backoff = Backoff(base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
        self._inflight: set[str] = set()
        self._retries: dict[str, int] = {}
        self._slots: asyncio.Semaphore | None = None
        self._processed = 0
        self._failed = 0
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

    # -- the mailbox ---------------------------------------------------------------------

    async def submit(self, task_id: str) -> None:
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
            loop = asyncio.get_running_loop()
            loop.call_later(outcome.retry_in, lambda: asyncio.ensure_future(self.submit(task_id)))

    async def status(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "backlog": len(self._inflight) + len(self._retries),
            "processed": self._processed,
            "failed": self._failed,
        }

    # -- one unit of work ----------------------------------------------------------------

    def handle(self, task_id: str) -> Stage | None:
        """Do this stage's work; return the next stage (default: the following one)."""
        raise NotImplementedError

    def _run(self, task_id: str) -> Outcome:
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session)
            if task.stage != self.stage.value or task.state not in RUNNABLE_STATES:
                return Outcome()  # stale message: cancelled, failed, or moved on already
        started = time.monotonic()
        try:
            target = self.handle(task_id) or next_stage(self.stage)
        except TransientError as exc:
            attempt = self._retries.get(task_id, 0)
            self._retries[task_id] = attempt + 1
            delay = self.backoff.delay(attempt)
            logger.warning("task %s %s: %s (retry in %.1f s)", task_id, self.stage, exc, delay)
            self._m_retries.inc()
            with unit_of_work(self.sessions) as session:
                task = get_task(task_id, session=session, lock=True)
                if task.state not in RUNNABLE_STATES:
                    self._retries.pop(task_id, None)
                    return Outcome()
                wait(task, str(exc), session=session)
            return Outcome(retry_in=delay)
        except PermanentError as exc:
            self._finish_failed(task_id, str(exc))
            return Outcome()
        except Exception as exc:
            logger.exception("task %s failed in %s", task_id, self.stage)
            self._finish_failed(task_id, f"internal error in {self.stage}: {type(exc).__name__}")
            return Outcome()
        self._retries.pop(task_id, None)
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            if task.stage != self.stage.value or task.state not in RUNNABLE_STATES:
                # Cancelled while we worked, or moved on (a result callback that overtook
                # the Uploader's own commit).
                return Outcome()
            self.on_advance(task, target, session=session)
        self._processed += 1
        self._m_tasks.inc(tags={"stage": self.stage.value, "outcome": "ok"})
        self._m_duration.observe(time.monotonic() - started)
        return Outcome(advance_to=target)

    def on_advance(self, task: Any, target: Stage, *, session: Any) -> None:
        """Commit the move to ``target`` (subclasses may record more in the same transaction)."""
        state = State.DONE if target == Stage.DONE else State.ACTIVE
        move_to(task, target, session=session, state=state)

    def _finish_failed(self, task_id: str, reason: str) -> None:
        self._retries.pop(task_id, None)
        logger.warning("task %s failed in %s: %s", task_id, self.stage, reason)
        with unit_of_work(self.sessions) as session:
            task = get_task(task_id, session=session, lock=True)
            if task.state in RUNNABLE_STATES:
                fail(task, reason, session=session)
        self._failed += 1
        self._m_tasks.inc(tags={"stage": self.stage.value, "outcome": "failed"})
