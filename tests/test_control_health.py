"""actors/control.py on the shared Ray cluster: restarts counted, a hung actor bounded in time,
a dead listener reported as not listening (issue 8 item 9).

The actors live in their own namespace under their own names, so the pipeline tests sharing
the cluster never see them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actors.control import STATUS_TIMEOUT_S, actor_status
from petray.ports import ActorStatus

pytestmark = [pytest.mark.ray]

NAMESPACE = "petray-test-health"
TIMEOUT_S = 30.0
HANG_S = 5.0


def probe_class() -> Any:
    """An actor with a status method that can be made to hang.

    Built inside a function so that Ray ships the class by value (workers need not import the
    tests package). Sync methods run one at a time: ``status`` waits behind ``hang``.
    """
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class Probe:
        def status(self) -> dict[str, Any]:
            return {"listening": True, "backlog": 1, "processed": 2}

        def hang(self, seconds: float) -> None:
            time.sleep(seconds)

    return Probe


@pytest.fixture
def probe(ray_cluster: None, request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    import ray

    name = f"health-probe.{request.node.name}"
    handle = probe_class().options(name=name, namespace=NAMESPACE).remote()
    ray.get(handle.status.remote(), timeout=TIMEOUT_S)
    yield name, handle
    ray.kill(handle, no_restart=True)


def status_of(name: str, **options: Any) -> ActorStatus:
    return asyncio.run(actor_status(name, namespace=NAMESPACE, listens=True, **options))


def wait_for(name: str, predicate: Any) -> ActorStatus:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        current = status_of(name)
        if predicate(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.1)


def test_a_killed_actor_comes_back_with_its_restart_counted(probe: tuple[str, Any]) -> None:
    import ray

    name, handle = probe
    first = status_of(name)
    assert (first.alive, first.responding, first.restarts, first.listening) == (True, True, 0, True)
    assert first.name == name.split(".", 1)[1]  # the namespace-like prefix dropped
    ray.kill(handle, no_restart=False)
    back = wait_for(name, lambda s: s.alive and s.responding and (s.restarts or 0) >= 1)
    assert back.alive and back.responding
    assert back.restarts is not None and back.restarts >= 1
    assert back.backlog == 1 and back.processed == 2


def test_a_hung_actor_is_alive_but_not_responding_within_the_bound(
    probe: tuple[str, Any],
) -> None:
    name, handle = probe
    # Calls from one caller run in submission order: the status call queues behind this.
    handle.hang.remote(HANG_S)
    started = time.perf_counter()
    hung = status_of(name)
    elapsed = time.perf_counter() - started
    assert hung.alive and not hung.responding
    assert hung.listening is None  # unknown, not a guess
    assert hung.restarts == 0
    assert elapsed < STATUS_TIMEOUT_S + 0.3


def test_a_dead_listener_is_down_and_not_listening(probe: tuple[str, Any]) -> None:
    import ray

    name, handle = probe
    ray.kill(handle, no_restart=True)
    dead = wait_for(name, lambda s: not s.alive)
    assert not dead.alive and dead.listening is False


def test_an_actor_that_was_never_started_is_down(ray_cluster: None) -> None:
    missing = status_of("health-probe.never-started")
    assert (missing.alive, missing.listening) == (False, False)
    assert missing.details == {"error": "not running"}
