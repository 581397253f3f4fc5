"""The health rules (petray/site/health.py, issue 8 item 9) without Ray or HTTP, and the facts read
from the database: each configured destination's last delivery outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from petray.db.engine import unit_of_work
from petray.db.models import Device, Task, TaskDestination, TaskEvent
from petray.demo.tasks import add_task
from petray.domain import Stage, State
from petray.ports import ActorStatus
from petray.site.health import (
    CheckKind,
    DeliveryState,
    DestinationFact,
    Observations,
    PingCache,
    RemoteFact,
    Status,
    Verdict,
    assess,
    destination_facts,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def healthy_actors() -> list[ActorStatus]:
    return [
        ActorStatus(name="store_scp", alive=True, restarts=0, listening=True),
        ActorStatus(name="compilator", alive=True, restarts=0),
        ActorStatus(name="store_scu", alive=True, restarts=0),
    ]


def make_facts(**overrides: Any) -> Observations:
    values: dict[str, Any] = {
        "database_ok": True,
        "actors": healthy_actors(),
        "free_disk_mb": 10_000,
        "min_free_disk_mb": 512,
        "remote": RemoteFact(reachable=True, latency_ms=12.0),
        "destinations": [DestinationFact(name="pacs", state=DeliveryState.OK, at=T0)],
    }
    values.update(overrides)
    return Observations(**values)


def check(facts: Observations, kind: CheckKind, name: str | None = None) -> Any:
    matches = [c for c in assess(facts).checks if c.kind is kind and name in (None, c.name)]
    assert len(matches) == 1, matches
    return matches[0]


def with_actor(index: int, **fields: Any) -> list[ActorStatus]:
    actors = healthy_actors()
    current = actors[index]
    actors[index] = ActorStatus(**{**current.__dict__, **fields})
    return actors


def test_all_well_is_ok_with_every_check_named() -> None:
    report = assess(make_facts())
    assert report.status is Status.OK
    assert report.problems == ()
    kinds = {c.kind for c in report.checks}
    assert kinds == set(CheckKind)
    assert [c.name for c in report.checks if c.kind is CheckKind.ACTOR] == [
        "store_scp",
        "compilator",
        "store_scu",
    ]


@pytest.mark.parametrize(
    ("overrides", "kind", "words"),
    [
        ({"database_ok": False, "database_error": "OperationalError"}, CheckKind.DATABASE,
         "OperationalError"),
        ({"actors": with_actor(0, listening=False)}, CheckKind.DICOM_LISTENER, "not listening"),
        ({"actors": with_actor(1, alive=False, details={"state": "RESTARTING"})},
         CheckKind.ACTOR, "restarting"),
        ({"actors": []}, CheckKind.ACTOR, "no pipeline actor"),
        ({"actors": None}, CheckKind.ACTOR, "did not report in time"),
        ({"free_disk_mb": 100}, CheckKind.DISK, "new studies are refused"),
    ],
)  # fmt: skip
def test_what_stops_the_gateway_is_down(
    overrides: dict[str, Any], kind: CheckKind, words: str
) -> None:
    facts = make_facts(**overrides)
    report = assess(facts)
    assert report.status is Status.DOWN
    failed = [c for c in report.checks if c.verdict is Verdict.FAIL]
    assert [c.kind for c in failed] == [kind]
    assert words in failed[0].reason


def test_disk_below_the_floor_says_new_studies_are_refused() -> None:
    disk = check(make_facts(free_disk_mb=100, min_free_disk_mb=512), CheckKind.DISK)
    assert disk.verdict is Verdict.FAIL
    assert "100 MB free, floor 512 MB" in disk.reason and "refused" in disk.reason
    assert check(make_facts(free_disk_mb=512), CheckKind.DISK).verdict is Verdict.OK


def test_a_failing_destination_degrades_with_its_reason_and_since() -> None:
    failing = DestinationFact(
        name="pacs",
        state=DeliveryState.FAILING,
        at=T0,
        since=T0 - timedelta(minutes=8),
        reason="cannot associate with PACS@127.0.0.1:104: Connection refused",
    )
    report = assess(make_facts(destinations=[failing]))
    assert report.status is Status.DEGRADED
    (problem,) = report.problems
    assert problem.kind is CheckKind.DESTINATION and problem.name == "pacs"
    assert problem.verdict is Verdict.WARN
    assert "Connection refused" in problem.reason
    assert problem.since == T0 - timedelta(minutes=8)


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({"remote": RemoteFact(reachable=False, error="connection refused")},
         CheckKind.REMOTE_SERVICE),
        ({"actors": with_actor(2, responding=False)}, CheckKind.ACTOR),
        # The SCP did not say whether it listens: a guess either way would lie.
        ({"actors": with_actor(0, listening=None, responding=False)}, CheckKind.ACTOR),
        ({"destinations": []}, CheckKind.DESTINATION),
        ({"free_disk_mb": None}, CheckKind.DISK),
    ],
)  # fmt: skip
def test_what_makes_tasks_wait_is_degraded(overrides: dict[str, Any], kind: CheckKind) -> None:
    report = assess(make_facts(**overrides))
    assert report.status is Status.DEGRADED
    assert kind in {c.kind for c in report.problems}
    assert all(c.verdict is Verdict.WARN for c in report.problems)


def test_unknown_listener_is_a_warning_not_ok() -> None:
    listener = check(make_facts(actors=with_actor(0, listening=None)), CheckKind.DICOM_LISTENER)
    assert listener.verdict is Verdict.WARN


def test_remote_unreachable_reason_says_tasks_wait() -> None:
    remote = check(
        make_facts(remote=RemoteFact(reachable=False, error="connection refused")),
        CheckKind.REMOTE_SERVICE,
    )
    assert remote.reason == "unreachable: connection refused; tasks wait and retry"


def test_restarts_are_reported_but_a_restarted_live_actor_is_ok() -> None:
    facts = make_facts(actors=with_actor(1, restarts=3))
    actor = check(facts, CheckKind.ACTOR, "compilator")
    assert actor.verdict is Verdict.OK and "restarted 3 times" in actor.reason
    assert assess(facts).status is Status.OK


def test_destination_never_used_is_unknown_and_does_not_degrade() -> None:
    facts = make_facts(destinations=[DestinationFact(name="new", state=DeliveryState.UNKNOWN)])
    assert check(facts, CheckKind.DESTINATION, "new").verdict is Verdict.UNKNOWN
    assert assess(facts).status is Status.OK


def test_no_destination_is_fine_when_results_go_back_to_the_sender() -> None:
    assert assess(make_facts(destinations=[], reply_to_sender=True)).status is Status.OK


def test_database_down_wins_over_warnings() -> None:
    facts = make_facts(
        database_ok=False,
        destinations=None,
        remote=RemoteFact(reachable=False, error="timeout"),
    )
    report = assess(facts)
    assert report.status is Status.DOWN
    assert not [c for c in report.checks if c.kind is CheckKind.DESTINATION]


def test_ping_cache_reuses_an_answer_while_fresh() -> None:
    now = [100.0]
    cache = PingCache(5.0, clock=lambda: now[0])
    fact = RemoteFact(reachable=False, error="refused")
    assert cache.get("http://a") is None
    cache.put("http://a", fact)
    now[0] += 5.0
    assert cache.get("http://a") == fact
    assert cache.get("http://b") is None  # a new URL is pinged afresh
    now[0] += 0.1
    assert cache.get("http://a") is None


# --- destination facts from the database (SQLite and PostgreSQL) ---------------------------


def add_destination(session: Session, name: str, port: int) -> tuple[str, str, int]:
    session.add(Device(name=name, ae_title=name.upper(), host="127.0.0.1", port=port,
                       is_destination=True))  # fmt: skip
    return name.upper(), "127.0.0.1", port


def deliver(
    session: Session,
    peer: tuple[str, str, int],
    *,
    state: str,
    reason: str = "",
    at: datetime,
) -> str:
    """A task whose delivery to ``peer`` ended in ``state``, last changed at ``at``."""
    task_id = add_task(session, stage=Stage.SENDING, state=State.WAITING)
    ae_title, host, port = peer
    session.add(TaskDestination(task_id=task_id, name="x", ae_title=ae_title, host=host,
                                port=port, state=state, reason=reason))  # fmt: skip
    if state != "done":
        session.add(TaskEvent(task_id=task_id, stage=Stage.SENDING, state=State.WAITING,
                              message=reason, at=at))  # fmt: skip
    session.flush()
    # After the flush: Task.updated has an onupdate default.
    session.execute(update(Task).where(Task.id == task_id).values(updated=at))
    return task_id


def facts_by_name(sessions: sessionmaker[Session]) -> dict[str, DestinationFact]:
    with unit_of_work(sessions) as session:
        return {f.name: f for f in destination_facts(session=session)}


def test_destination_facts_follow_the_newest_outcome(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        pacs = add_destination(session, "pacs", 104)
        archive = add_destination(session, "archive", 105)
        add_destination(session, "fresh", 106)
        session.add(Device(name="scanner", ae_title="PET01", host="127.0.0.1", port=107,
                           is_source=True))  # fmt: skip
        deliver(session, pacs, state="done", at=T0)
        deliver(session, pacs, state="waiting", reason="refused: first", at=T0 + timedelta(1))
        deliver(session, pacs, state="waiting", reason="refused: newest", at=T0 + timedelta(2))
        # A row not yet tried or in progress is not an outcome.
        deliver(session, pacs, state="waiting", at=T0 + timedelta(3))
        deliver(session, pacs, state="sending", at=T0 + timedelta(4))
        deliver(session, archive, state="failed", reason="rejected", at=T0)
        deliver(session, archive, state="done", at=T0 + timedelta(hours=1))
    facts = facts_by_name(sessions)
    assert set(facts) == {"pacs", "archive", "fresh"}  # destinations only, not sources
    assert facts["pacs"].state is DeliveryState.FAILING
    assert facts["pacs"].reason == "refused: newest"
    # The run of failures began with the first failure after the last success.
    assert facts["pacs"].since == T0 + timedelta(1)
    assert facts["pacs"].at == T0 + timedelta(2)
    assert facts["archive"].state is DeliveryState.OK
    assert facts["archive"].at == T0 + timedelta(hours=1)
    assert facts["fresh"].state is DeliveryState.UNKNOWN


def test_a_destination_at_a_new_address_starts_afresh(sessions: sessionmaker[Session]) -> None:
    with unit_of_work(sessions) as session:
        pacs = add_destination(session, "pacs", 104)
        deliver(session, pacs, state="failed", reason="rejected", at=T0)
    with unit_of_work(sessions) as session:
        session.execute(update(Device).where(Device.name == "pacs").values(port=11104))
    assert facts_by_name(sessions)["pacs"].state is DeliveryState.UNKNOWN


def test_a_lost_filter_worker_degrades_but_a_lost_pipeline_actor_is_down() -> None:
    # Filter capacity follows the cluster's nodes (issue 12): losing one is not an outage.
    lost = ActorStatus(name="filter_worker.ab12.0", alive=False, restarts=0)
    facts = make_facts(actors=[*healthy_actors(), lost])
    worker = check(facts, CheckKind.ACTOR, "filter_worker.ab12.0")
    assert worker.verdict is Verdict.WARN and "filtering capacity" in worker.reason
    assert assess(facts).status is Status.DEGRADED
    dead = make_facts(actors=with_actor(1, alive=False))
    assert assess(dead).status is Status.DOWN
