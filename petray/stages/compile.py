"""The Compiling stage's work on a batch of received instances (issue 14), without Ray.

``Compiler`` holds the open series assemblies and applies the rules to each batch inside the
caller's transaction: route every instance to its assembly (opening a task for a new series),
claim the instances for their tasks, decide every touched assembly, and commit the end of those
that are ready or must abort. It says which assemblies want a recheck and when; the
CompilatorActor owns the timers, the batching window and the dispatch to the Validator, and
``bench/ingest.py`` drives the same class to measure it.

NumberOfSlices is a hint (issue 8): assemblies dispatched on their declared count are
remembered for a while, so that more slices of the same series arriving later reopen the task
if it has not left the gateway, or fail it and the rest with the contradiction named.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from petray.db.models import Task
from petray.dicom.ingest import ReceivedInstance
from petray.domain import Stage, State
from petray.stages.assemblies import assign, compiling, open_task, reopen_or_fail, still_unassigned
from petray.stages.compilator import (
    Compilation,
    CompilatorConfig,
    SeriesAssembly,
    SeriesKey,
    Verdict,
)
from petray.tasks import add_note, fail, move_to

logger = logging.getLogger(__name__)

# Assemblies dispatched on their NumberOfSlices are remembered this long (and this many per
# series), so that more slices of the same series arriving later are recognised as such.
DISPATCHED_MEMORY_S = 3600.0
DISPATCHED_PER_SERIES = 4


@dataclass
class BatchOutcome:
    """What a committed batch decided."""

    # Ended in this transaction: "" when ready (now validating), else why it aborted.
    closed: list[tuple[SeriesAssembly, str]] = field(default_factory=list)
    # Decided again, or forgotten (their task was deleted or cancelled): any recheck of theirs
    # that was pending is void.
    settled: list[str] = field(default_factory=list)
    # Still open: decide them again after this many seconds without a new instance.
    recheck: dict[str, float] = field(default_factory=dict)
    # The instances each task claimed in this batch, in the order they came.
    joined: dict[str, list[ReceivedInstance]] = field(default_factory=dict)
    # The tasks opened by this batch (their first instances are all in ``joined``).
    opened: set[str] = field(default_factory=set)
    # Forgotten: their task was deleted or cancelled while open.
    gone: list[str] = field(default_factory=list)


class Compiler:
    def __init__(self) -> None:
        self.compilation = Compilation()
        # Restored from the database and not yet decided: decided with the next batch.
        self._undecided: set[str] = set()
        self._dispatched_on_count: dict[SeriesKey, deque[tuple[float, SeriesAssembly]]] = {}

    def __len__(self) -> int:
        return len(self.compilation)

    def restore(self, assemblies: Iterable[SeriesAssembly]) -> None:
        """Start over from the open assemblies the database holds."""
        self.compilation = Compilation()
        for assembly in assemblies:
            self.compilation.open(assembly)
        self._undecided = {assembly.task_id for assembly in self.compilation}

    def open_task_ids(self) -> list[str]:
        return [assembly.task_id for assembly in self.compilation]

    def forget_gone(self, live: set[str]) -> list[str]:
        """Drop the assemblies whose task is no longer compiling; their task ids."""
        gone = [a.task_id for a in self.compilation if a.task_id not in live]
        for task_id in gone:
            logger.info("task %s is no longer compiling; forgetting it", task_id)
            self.compilation.close(task_id)
        return gone

    def take(
        self,
        batch: Sequence[ReceivedInstance],
        *,
        session: Session,
        config: CompilatorConfig,
        now: float,
    ) -> BatchOutcome:
        """Route, claim and decide ``batch`` in the caller's transaction."""
        outcome = BatchOutcome()
        batch = still_unassigned(list(batch), session=session)
        if batch:
            # Deleted or cancelled while open: its instances must not join it.
            live = compiling(self.open_task_ids(), session=session)
            outcome.gone = self.forget_gone(live)
            outcome.settled.extend(outcome.gone)
        touched: dict[str, SeriesAssembly] = {}
        for instance in batch:
            assembly = self.compilation.route(instance)
            if assembly is None:
                assembly = self._beyond_declared(instance, session=session, now=now)
            if assembly is None:
                assembly = open_task(instance, session=session, now=now)
                self.compilation.open(assembly)
                outcome.opened.add(assembly.task_id)
            assembly.add(instance, now)
            outcome.joined.setdefault(assembly.task_id, []).append(instance)
            touched[assembly.task_id] = assembly
        for task_id, instances in outcome.joined.items():
            assign([i.instance_pk for i in instances], touched[task_id], session=session)
        # Assemblies restored from the database get their first decision here too.
        for task_id in self._undecided:
            restored = self.compilation.get(task_id)
            if restored is not None:
                touched.setdefault(task_id, restored)
        self._undecided.clear()
        for assembly in touched.values():
            outcome.settled.append(assembly.task_id)
            failure, recheck_in = self.decide(assembly, config, now)
            if failure is None:
                if recheck_in is not None:
                    outcome.recheck[assembly.task_id] = recheck_in
            elif self.close_in(assembly, failure, session=session):
                outcome.closed.append((assembly, failure))
        return outcome

    @staticmethod
    def decide(
        assembly: SeriesAssembly, config: CompilatorConfig, now: float
    ) -> tuple[str | None, float | None]:
        """(None, seconds to the next decision) while open; ("", None) when ready; (why, None)
        when it aborts."""
        decision = assembly.decide(config, now)
        if decision.verdict == Verdict.READY:
            return "", None
        if decision.verdict == Verdict.ABORT:
            return decision.reason, None
        return None, decision.recheck_in

    def close_in(self, assembly: SeriesAssembly, failure: str, *, session: Session) -> bool:
        """Commit the assembly's end; False when its task was deleted or cancelled meanwhile."""
        self.compilation.close(assembly.task_id)
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

    def dispatched(self, assembly: SeriesAssembly, now: float) -> None:
        """After the commit of a ready assembly: remember it if its NumberOfSlices decided."""
        if assembly.expected is not None:
            recent = self._dispatched_on_count.setdefault(
                assembly.key, deque(maxlen=DISPATCHED_PER_SERIES)
            )
            recent.append((now, assembly))

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
            self.compilation.open(earlier)
            logger.warning("task %s reopened: %s", earlier.task_id, note)
            return earlier
        rest = open_task(instance, session=session, now=now)
        rest.contradict(note)
        rest.doomed = (
            f"{note} (task {earlier.task_id} had already left the gateway with "
            f"{earlier.images} images): correct the series and send it again"
        )
        self.compilation.open(rest)
        logger.warning("task %s: %s; failing the rest", earlier.task_id, note)
        return rest
