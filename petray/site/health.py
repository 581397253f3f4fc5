"""Can the gateway do its job? The rules of the health report (issue 8, item 9).

``/api/v1/health`` once said ``ok`` while a destination had been down for 8 minutes, because it
looked only at the database. The facts are now observed at the edges (actors over Ray, the
database, the disk, the service's ping) and judged here, so the rules are testable without Ray
or HTTP and the API and the console give the same verdict:

- ``down``: the gateway cannot accept or process studies (database unreachable, Store SCP not
  listening, a pipeline actor not alive, free disk below the floor at which the SCP refuses);
- ``degraded``: studies are accepted but some wait (a destination failing, the service
  unreachable, an actor not answering in time): tasks retry and nothing is lost yet;
- ``ok``: nothing known to be wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from petray.db.models import Task, TaskDestination, TaskEvent
from petray.domain import Stage, State
from petray.ports import ActorStatus
from petray.site.siteconfig import destinations

# Delivery rows that say how the last attempt on a destination ended. "waiting" with a reason is
# a transient failure awaiting its retry; "waiting" without one was never tried, "sending" is in
# progress (an instance was just accepted): neither is an outcome yet.
DONE, FAILED, WAITING = "done", "failed", "waiting"
# How far back a failing streak is followed to find when it began.
STREAK_LIMIT = 200
MAX_REASON_CHARS = 300


class Status(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"  # the gateway works, some tasks wait
    FAIL = "fail"  # the gateway cannot do its job
    UNKNOWN = "unknown"  # nothing to judge yet (a destination never used)


class CheckKind(StrEnum):
    DATABASE = "database"
    DICOM_LISTENER = "dicom_listener"
    ACTOR = "actor"
    DISK = "disk"
    REMOTE_SERVICE = "remote_service"
    DESTINATION = "destination"


class DeliveryState(StrEnum):
    OK = "ok"
    FAILING = "failing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RemoteFact:
    reachable: bool
    latency_ms: float | None = None
    error: str = ""


@dataclass(frozen=True)
class DestinationFact:
    """The newest delivery outcome on one configured destination."""

    name: str
    state: DeliveryState
    at: datetime | None = None  # when that outcome was recorded
    since: datetime | None = None  # failing: first failure of the current run of failures
    reason: str = ""


@dataclass(frozen=True)
class Observations:
    database_ok: bool
    actors: Sequence[ActorStatus] | None  # None: the pipeline did not report in time
    free_disk_mb: int | None  # None: the file system did not answer in time
    min_free_disk_mb: int
    remote: RemoteFact
    # None when the database could not be read (the database check already fails).
    destinations: Sequence[DestinationFact] | None
    database_error: str = ""
    reply_to_sender: bool = False


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    name: str
    verdict: Verdict
    reason: str
    since: datetime | None = None


@dataclass(frozen=True)
class HealthReport:
    status: Status
    checks: tuple[Check, ...]

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict in (Verdict.WARN, Verdict.FAIL))


def assess(facts: Observations) -> HealthReport:
    checks = (
        _database(facts),
        _listener(facts.actors),
        *_actors(facts.actors),
        _disk(facts),
        _remote(facts.remote),
        *_destinations(facts),
    )
    verdicts = {c.verdict for c in checks}
    if Verdict.FAIL in verdicts:
        status = Status.DOWN
    elif Verdict.WARN in verdicts:
        status = Status.DEGRADED
    else:
        status = Status.OK
    return HealthReport(status=status, checks=checks)


def _database(facts: Observations) -> Check:
    if facts.database_ok:
        return Check(CheckKind.DATABASE, "database", Verdict.OK, "answers")
    detail = f" ({facts.database_error})" if facts.database_error else ""
    return Check(CheckKind.DATABASE, "database", Verdict.FAIL, f"unreachable{detail}")


def listener_state(actors: Sequence[ActorStatus] | None) -> bool | None:
    """Whether the DICOM listener listens, as its actor reported; None when it did not say."""
    reported = [a.listening for a in actors or () if a.listening is not None]
    return all(reported) if reported else None


def _listener(actors: Sequence[ActorStatus] | None) -> Check:
    name = "dicom_listener"
    listening = listener_state(actors)
    if listening is None:
        # The Store SCP did not answer in time (or is not in the report): it may well be
        # listening, but saying so would be a guess.
        return Check(CheckKind.DICOM_LISTENER, name, Verdict.WARN, "unknown: no answer from it")
    if listening:
        return Check(CheckKind.DICOM_LISTENER, name, Verdict.OK, "listening")
    return Check(
        CheckKind.DICOM_LISTENER, name, Verdict.FAIL, "not listening: studies cannot be received"
    )


def _actors(actors: Sequence[ActorStatus] | None) -> list[Check]:
    if actors is None:
        reason = "the pipeline did not report in time"
        return [Check(CheckKind.ACTOR, "pipeline", Verdict.FAIL, reason)]
    if not actors:
        return [Check(CheckKind.ACTOR, "pipeline", Verdict.FAIL, "no pipeline actor reported")]
    return [_actor(a) for a in actors]


# Short actor names (actors.control) of filter workers start with this.
FILTER_WORKER = "filter_worker"


def _actor(actor: ActorStatus) -> Check:
    restarted = f", restarted {actor.restarts} times" if actor.restarts else ""
    if not actor.alive:
        detail = actor.details.get("state") or actor.details.get("error") or ""
        reason = f"not alive ({str(detail).lower()})" if detail else "not alive"
        if actor.name.startswith(FILTER_WORKER):
            # Filter capacity comes and goes with the cluster's nodes (issue 12): tasks wait in
            # unpacking with a reason and go on elsewhere; ingest and delivery are unaffected.
            reason += ": less filtering capacity, tasks wait for it"
            return Check(CheckKind.ACTOR, actor.name, Verdict.WARN, reason + restarted)
        return Check(CheckKind.ACTOR, actor.name, Verdict.FAIL, reason + restarted)
    if not actor.responding:
        return Check(
            CheckKind.ACTOR,
            actor.name,
            Verdict.WARN,
            "alive but not answering in time (busy or hung)" + restarted,
        )
    return Check(CheckKind.ACTOR, actor.name, Verdict.OK, "alive" + restarted)


def _disk(facts: Observations) -> Check:
    if facts.free_disk_mb is None:
        return Check(CheckKind.DISK, "disk", Verdict.WARN, "free space unknown: no answer in time")
    amounts = f"{facts.free_disk_mb:,} MB free, floor {facts.min_free_disk_mb:,} MB"
    if facts.free_disk_mb < facts.min_free_disk_mb:
        # Below the floor the Store SCP answers "out of resources" to every C-STORE.
        return Check(CheckKind.DISK, "disk", Verdict.FAIL, f"{amounts}: new studies are refused")
    return Check(CheckKind.DISK, "disk", Verdict.OK, amounts)


def _remote(remote: RemoteFact) -> Check:
    name = "remote_service"
    if remote.reachable:
        latency = f" in {remote.latency_ms:.0f} ms" if remote.latency_ms is not None else ""
        return Check(CheckKind.REMOTE_SERVICE, name, Verdict.OK, f"answers{latency}")
    error = f": {remote.error}" if remote.error else ""
    return Check(
        CheckKind.REMOTE_SERVICE,
        name,
        Verdict.WARN,
        f"unreachable{error}; tasks wait and retry",
    )


def _destinations(facts: Observations) -> list[Check]:
    if facts.destinations is None:
        return []
    if not facts.destinations:
        if facts.reply_to_sender:
            return []
        return [
            Check(
                CheckKind.DESTINATION,
                "destinations",
                Verdict.WARN,
                "no DICOM destination configured: tasks fail at validation",
            )
        ]
    return [_destination(d) for d in facts.destinations]


def _destination(fact: DestinationFact) -> Check:
    if fact.state is DeliveryState.OK:
        return Check(CheckKind.DESTINATION, fact.name, Verdict.OK, "last delivery succeeded")
    if fact.state is DeliveryState.FAILING:
        reason = f"last delivery failed: {fact.reason}" if fact.reason else "last delivery failed"
        return Check(CheckKind.DESTINATION, fact.name, Verdict.WARN, reason, since=fact.since)
    return Check(CheckKind.DESTINATION, fact.name, Verdict.UNKNOWN, "no delivery yet")


# --- facts from the database ---------------------------------------------------------------


def destination_facts(*, session: Session) -> list[DestinationFact]:
    """The newest delivery outcome of each configured destination device.

    Delivery rows copy the destination's AE title, host and port, so a device whose address
    changed starts afresh (unknown) instead of inheriting the old address's failures.
    """
    return [
        _destination_fact(d.name, (d.ae_title, d.host, d.port), session=session)
        for d in destinations(session=session)
    ]


def _destination_fact(
    name: str, peer: tuple[str, str, int], *, session: Session
) -> DestinationFact:
    ae_title, host, port = peer
    outcome = or_(
        TaskDestination.state.in_((DONE, FAILED)),
        and_(TaskDestination.state == WAITING, TaskDestination.reason != ""),
    )
    rows = session.execute(
        select(TaskDestination.task_id, TaskDestination.state, TaskDestination.reason, Task.updated)
        .join(Task, Task.id == TaskDestination.task_id)
        .where(
            TaskDestination.ae_title == ae_title,
            TaskDestination.host == host,
            TaskDestination.port == port,
            outcome,
        )
        # The task's last change is the closest thing to "when" a delivery row has.
        .order_by(Task.updated.desc(), TaskDestination.id.desc())
        .limit(STREAK_LIMIT)
    ).all()
    if not rows:
        return DestinationFact(name=name, state=DeliveryState.UNKNOWN)
    newest = rows[0]
    if newest.state == DONE:
        return DestinationFact(name=name, state=DeliveryState.OK, at=newest.updated)
    streak = []
    for row in rows:
        if row.state == DONE:
            break
        streak.append(row)
    first = streak[-1]
    return DestinationFact(
        name=name,
        state=DeliveryState.FAILING,
        at=newest.updated,
        since=_first_failure(first.task_id, session=session) or first.updated,
        reason=newest.reason[:MAX_REASON_CHARS],
    )


def _first_failure(task_id: str, *, session: Session) -> datetime | None:
    """When the task's delivery first failed: its first sending event that waits or fails."""
    first: datetime | None = session.scalar(
        select(func.min(TaskEvent.at)).where(
            TaskEvent.task_id == task_id,
            TaskEvent.stage == Stage.SENDING.value,
            TaskEvent.state.in_((State.WAITING.value, State.FAILED.value)),
        )
    )
    return first


# --- the service's ping, kept for a few seconds --------------------------------------------


class PingCache:
    """The last ping of each service URL, reused while fresh.

    Probes may poll the health endpoint every second; the service should not get a ping per
    probe, and a slow or dead service should not make every probe wait for its timeout.
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must not be negative, got {ttl_s}")
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, RemoteFact]] = {}

    def get(self, url: str) -> RemoteFact | None:
        entry = self._entries.get(url)
        if entry is None or self._clock() - entry[0] > self._ttl_s:
            return None
        return entry[1]

    def put(self, url: str, fact: RemoteFact) -> None:
        # One entry per URL ever configured: a handful, never worth evicting.
        self._entries[url] = (self._clock(), fact)
