"""Series assembly: grouping received instances into tasks and deciding when a task is ready.

Readiness follows the product workflow (spec/workflow_es.txt): a minimum image count and either
the expected count from NumberOfSlices, or, when that is absent, slices without gaps after a
quiet period. Everything here is pure: time comes in as an argument, the actor owns the clock.

NumberOfSlices is a hint, not the truth (issue 8): when more images arrive than it declares, the
geometry wins. The assembly forgets the declared count, notes the contradiction and falls back to
the contiguity rule, so one volume is never cut into tasks of the declared size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from statistics import median

from petray.dicom.ingest import ReceivedInstance


@dataclass(frozen=True)
class CompilatorConfig:
    min_images: int
    # A gap between neighbouring slices wider than this many median spacings is a missing slice.
    slice_gap_tolerance: float
    inactivity_wait_s: float
    abort_timeout_s: float


class Verdict(StrEnum):
    READY = "ready"
    WAIT = "wait"
    ABORT = "abort"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""
    # Seconds from now after which the decision may change (None: only a new instance changes it).
    recheck_in: float | None = None


SeriesKey = tuple[int, str]  # (series pk, calling AE): one task per series and sender


@dataclass
class SeriesAssembly:
    """The open task of one series from one sender, while its instances arrive."""

    task_id: str
    series_pk: int
    calling_ae: str
    peer_host: str
    last_activity: float
    sop_uids: set[str] = field(default_factory=set)
    positions: list[float] = field(default_factory=list)
    # The largest image count the instances' NumberOfSlices declared (None: none declared).
    declared: int | None = None
    # Set once more images arrived than declared: the declared count is ignored from then on.
    contradiction: str = ""
    # Set when the task cannot succeed whatever arrives (e.g. the rest of a series that was
    # already dispatched): the assembly still gathers its instances, then aborts with this.
    doomed: str = ""

    @property
    def key(self) -> SeriesKey:
        return (self.series_pk, self.calling_ae)

    @property
    def images(self) -> int:
        return len(self.sop_uids)

    @property
    def expected(self) -> int | None:
        """The image count to wait for: the declared one, unless the images contradicted it."""
        return None if self.contradiction else self.declared

    def add(self, instance: ReceivedInstance, now: float) -> None:
        self.sop_uids.add(instance.sop_instance_uid)
        self.positions.append(instance.slice_position)
        if instance.number_of_slices:
            self.declared = max(self.declared or 0, instance.number_of_slices)
        self.last_activity = max(self.last_activity, now)
        self._check_declared()

    def contradict(self, note: str) -> None:
        """Stop trusting the declared count (geometry wins); ``note`` says why."""
        self.contradiction = self.contradiction or note

    def _check_declared(self) -> None:
        if self.declared is not None and self.images > self.declared and not self.contradiction:
            self.contradict(
                f"NumberOfSlices says {self.declared} images but more arrived; "
                "the series was assembled by slice positions instead"
            )

    def largest_gap(self) -> tuple[float, float] | None:
        """(largest gap, median spacing) between neighbouring slice positions, in mm."""
        ordered = sorted(set(round(p, 3) for p in self.positions))
        if len(ordered) < 3:
            return None
        steps = [b - a for a, b in pairwise(ordered)]
        return max(steps), median(steps)

    def decide(self, config: CompilatorConfig, now: float) -> Decision:
        idle = now - self.last_activity
        if self.doomed:
            # Gather the rest of what the sender streams, then fail once, with the reason.
            if idle < config.inactivity_wait_s:
                return Decision(Verdict.WAIT, "receiving", config.inactivity_wait_s - idle)
            return Decision(Verdict.ABORT, self.doomed)
        if self.expected is not None and self.images >= self.expected:
            if self.images >= config.min_images:
                return Decision(Verdict.READY)
            # Too few for the minimum: before failing, give a NumberOfSlices that may be lying
            # the quiet period to be contradicted by more images.
            if idle < config.inactivity_wait_s:
                return Decision(Verdict.WAIT, "receiving", config.inactivity_wait_s - idle)
            return Decision(
                Verdict.ABORT,
                f"series complete with {self.images} images (NumberOfSlices {self.declared}), "
                f"fewer than the minimum {config.min_images}",
            )
        if idle >= config.abort_timeout_s:
            return Decision(Verdict.ABORT, self._incomplete_reason(config, idle))
        until_abort = config.abort_timeout_s - idle
        if self.expected is not None:
            return Decision(Verdict.WAIT, "waiting for the expected images", until_abort)
        if idle < config.inactivity_wait_s:
            return Decision(Verdict.WAIT, "receiving", config.inactivity_wait_s - idle)
        problem = self._contiguity_problem(config)
        if problem:
            return Decision(Verdict.WAIT, problem, until_abort)
        return Decision(Verdict.READY)

    def _contiguity_problem(self, config: CompilatorConfig) -> str:
        if self.images < config.min_images:
            return f"{self.images} images, fewer than the minimum {config.min_images}"
        gap = self.largest_gap()
        if gap is None:
            return "too few slices to check contiguity"
        largest, spacing = gap
        if spacing <= 0 or largest > config.slice_gap_tolerance * spacing:
            return f"gap of {largest:.1f} mm between slices (spacing {spacing:.1f} mm)"
        return ""

    def _incomplete_reason(self, config: CompilatorConfig, idle: float) -> str:
        if self.expected is not None:
            what = f"{self.images} of {self.expected} images"
        else:
            what = self._contiguity_problem(config) or f"{self.images} images"
        return f"incomplete series aborted after {idle:.0f} s without new images: {what}"


class Compilation:
    """All open assemblies, routed by series and sender."""

    def __init__(self) -> None:
        self._open: dict[SeriesKey, list[SeriesAssembly]] = {}
        self._by_task: dict[str, SeriesAssembly] = {}

    def __len__(self) -> int:
        return len(self._by_task)

    def __iter__(self) -> Iterator[SeriesAssembly]:
        return iter(list(self._by_task.values()))

    def get(self, task_id: str) -> SeriesAssembly | None:
        return self._by_task.get(task_id)

    def route(self, instance: ReceivedInstance) -> SeriesAssembly | None:
        """The open assembly this instance joins; None when it needs a new task.

        A SOP Instance UID already present in every open assembly of the series is a re-send:
        it starts a new task rather than silently replacing the first copy.
        """
        for assembly in self._open.get((instance.series_pk, instance.calling_ae), []):
            if instance.sop_instance_uid not in assembly.sop_uids:
                return assembly
        return None

    def open(self, assembly: SeriesAssembly) -> None:
        self._open.setdefault(assembly.key, []).append(assembly)
        self._by_task[assembly.task_id] = assembly

    def close(self, task_id: str) -> None:
        assembly = self._by_task.pop(task_id, None)
        if assembly is None:
            return
        siblings = self._open.get(assembly.key, [])
        siblings[:] = [a for a in siblings if a.task_id != task_id]
        if not siblings:
            self._open.pop(assembly.key, None)
