"""FilterWorkers that follow the cluster's ``filter_worker`` capacity (issue 12).

A fixed pool created at start left nodes that joined later unused, and put every worker on the
head of a cluster that offered the resource there. Instead the pool is sized from the nodes Ray
reports alive: one worker per ``filter_worker`` slot of each node, pinned to that node (so
workers spread as the nodes' capacity says), created when a node appears and removed when it is
gone. A single-node gateway offers ``PETRAY_FILTER_WORKERS`` slots on its own node (actors/
gateway.py), so it keeps exactly that many workers; a cluster's head offers none by default
(cluster.yaml) and filtering runs on the worker nodes.

``sync_pool`` is cheap (two GCS reads when nothing changed) and is called by whoever needs the
workers: the pipeline at start, the Unpacker before each task and on a timer.

Workers are detached actors: on a cluster they outlive a gateway restart and are taken over by
the next one (same names), and whoever builds the pipeline removes them when it stops.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import ray

from actors.filter_worker import FilterWorker
from actors.names import FILTER_RESOURCE, NAMESPACE, filter_worker_name, filter_workers_in
from actors.placement import on_node
from actors.runtime import actor_names, actor_state

logger = logging.getLogger(__name__)
ALIVE = "ALIVE"


@dataclass(frozen=True)
class PoolWorker:
    name: str
    node_id: str
    handle: Any


@dataclass(frozen=True)
class PoolState:
    """The workers the cluster's capacity calls for, and how many of them are alive."""

    workers: tuple[PoolWorker, ...]
    alive: tuple[PoolWorker, ...]
    slots: int

    def waiting_reason(self) -> str:
        """Why no filter can run now (empty when some worker is alive)."""
        if self.alive:
            return ""
        if not self.slots:
            return (
                "no filter worker available: no node offers the filter_worker resource "
                "(waiting for a filter node to join the cluster)"
            )
        return f"no filter worker available: 0 of {self.slots} alive"


def filter_capacity() -> dict[str, int]:
    """``filter_worker`` slots of every node Ray reports alive, by node id."""
    capacity: dict[str, int] = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        slots = int(node.get("Resources", {}).get(FILTER_RESOURCE, 0))
        if node.get("Alive") and slots > 0:
            capacity[str(node["NodeID"])] = slots
    return capacity


def pool_names() -> list[str]:
    """Names of the FilterWorkers that exist (alive, starting or restarting), sorted."""
    return filter_workers_in(actor_names())


def _remove(name: str) -> None:
    with contextlib.suppress(ValueError):  # gone already
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


def sync_pool() -> PoolState:
    """Create the workers the alive nodes' capacity calls for, remove those of nodes gone."""
    capacity = filter_capacity()
    wanted = {
        filter_worker_name(node_id, slot): node_id
        for node_id, slots in capacity.items()
        for slot in range(slots)
    }
    existing = set(pool_names())
    for name in sorted(existing - wanted.keys()):
        logger.info("removing %s: its node left or no longer offers the slot", name)
        _remove(name)
    workers: list[PoolWorker] = []
    for name, node_id in wanted.items():
        if name not in existing:
            logger.info("creating %s", name)
        handle = FilterWorker.options(  # type: ignore[attr-defined]
            name=name,
            namespace=NAMESPACE,
            get_if_exists=True,  # another caller may have created it a moment ago
            lifetime="detached",
            resources={FILTER_RESOURCE: 1},
            **on_node(node_id),
        ).remote()
        workers.append(PoolWorker(name, node_id, handle))
    alive = tuple(w for w in workers if actor_state(w.handle)[0] == ALIVE)
    return PoolState(workers=tuple(workers), alive=alive, slots=len(wanted))


def remove_pool() -> None:
    """Remove every FilterWorker (the gateway stops)."""
    for name in pool_names():
        _remove(name)
