"""The running pipeline as the HTTP layer sees it (petray.ports.PipelineControl) over Ray."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import ray

from actors.names import (
    DOWNLOADER,
    NAMESPACE,
    PIPELINE_ACTORS,
    STORE_SCP,
    filter_workers_in,
    store_scp_siblings_in,
)
from actors.runtime import Dispatcher, actor_names
from actors.store_scp import store_scp_siblings
from petray.db.engine import unit_of_work
from petray.domain import Stage
from petray.ports import ActorStatus
from petray.tasks import get_task

logger = logging.getLogger(__name__)
# The health endpoint must answer within 1 s even when an actor hangs (issue 8 item 9): every
# actor is asked at once and a status not back within this bound counts as "not responding".
STATUS_TIMEOUT_S = 0.5
ALIVE = "ALIVE"


@dataclass(frozen=True)
class ActorRecord:
    """What Ray's control store (GCS) knows of an actor, independent of its mailbox."""

    state: str | None  # ALIVE, RESTARTING, DEAD...; None when the lookup failed
    restarts: int | None


def gcs_record(handle: Any) -> ActorRecord:
    """The actor's state and restart count straight from the GCS actor table (~2 ms).

    Ray's public state API (``ray.util.state.list_actors``) answers through the dashboard's
    API server, which a gateway may run without (``PETRAY_DASHBOARD=false``, and the tests),
    and would then ask whatever else answers on 127.0.0.1:8265. The GCS table behind it is
    always there. It is a private API of the pinned Ray version, so a change in it leaves the
    restart count unknown rather than failing the health report.
    """
    try:
        from ray._private.state import actors

        info = actors(actor_id=handle._actor_id.hex())
        return ActorRecord(state=str(info["State"]), restarts=int(info["NumRestarts"]))
    except Exception as exc:  # whatever a Ray upgrade changed: unknown, not an error page
        logger.debug("GCS actor lookup failed: %s", type(exc).__name__)
        return ActorRecord(state=None, restarts=None)


def short_name(name: str) -> str:
    """``petray.store_scp`` -> ``store_scp``; ``petray.filter_worker.0`` -> ``filter_worker.0``."""
    return name.split(".", 1)[-1]


async def actor_status(
    name: str,
    *,
    namespace: str = NAMESPACE,
    asks_status: bool = True,
    listens: bool = False,
    timeout_s: float = STATUS_TIMEOUT_S,
) -> ActorStatus:
    """One actor's liveness and restarts (from the GCS) and its own status, within ``timeout_s``.

    ``asks_status``: call the actor's ``status()`` for its counters (actors without one are
    judged on the GCS alone). ``listens``: the actor owns the DICOM listener, so an actor that
    is gone means a listener that is gone.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    short = short_name(name)
    gone = False if listens else None

    def lookup() -> tuple[Any, ActorRecord]:
        handle = ray.get_actor(name, namespace=namespace)
        return handle, gcs_record(handle)

    def down(restarts: int | None = None, **details: object) -> ActorStatus:
        return ActorStatus(
            name=short,
            alive=False,
            responding=False,
            restarts=restarts,
            listening=gone,
            details=dict(details),
        )

    try:
        # get_actor and the GCS lookup block: off the event loop, bounded like the rest.
        handle, record = await asyncio.wait_for(asyncio.to_thread(lookup), timeout=timeout_s)
    except ValueError:  # no actor by that name: never started, or dead for good
        return down(error="not running")
    except TimeoutError:
        return down(error="Ray did not answer")
    if record.state is not None and record.state != ALIVE:
        return down(record.restarts, state=record.state)
    if not asks_status:
        return ActorStatus(name=short, alive=True, restarts=record.restarts)
    try:
        info: dict[str, Any] = await asyncio.wait_for(
            handle.status.remote(), timeout=max(deadline - loop.time(), 0.0)
        )
    except ray.exceptions.RayActorError as exc:  # died or restarting since the lookup
        return down(record.restarts, error=type(exc).__name__)
    except (TimeoutError, ray.exceptions.RayError) as exc:
        # Alive, but busy, hung or its status method failed: counters and listener unknown.
        error = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
        return ActorStatus(
            name=short,
            alive=True,
            responding=False,
            restarts=record.restarts,
            details={"error": error},
        )
    return ActorStatus(
        name=short,
        alive=True,
        backlog=int(info.get("backlog", 0)),
        processed=int(info.get("processed", info.get("received", 0))),
        failed=int(info.get("failed", info.get("refused", 0))),
        restarts=record.restarts,
        listening=bool(info.get("listening")) if listens else None,
        details=info,
    )


class RayPipelineControl:
    def __init__(self, sessions: Any, *, filter_workers: int = 0) -> None:
        self._sessions = sessions
        self._dispatcher = Dispatcher()
        # The filter worker pool follows the cluster's capacity (issue 12): the workers that
        # exist are listed at each report; ``filter_workers`` is kept for callers.
        del filter_workers

    async def result_ready(self, task_id: str) -> None:
        # Fire and forget: the download runs in the Downloader's mailbox, not in this request.
        self._dispatcher.handle(DOWNLOADER).submit.remote(task_id)

    async def resume(self, task_id: str) -> None:
        with unit_of_work(self._sessions) as session:
            stage = Stage(get_task(task_id, session=session).stage)
        self._dispatcher.submit(stage, task_id)

    async def status(self) -> list[ActorStatus]:
        # Filter workers have no status method (and may be busy filtering for seconds): their
        # liveness and restarts come from the GCS alone.
        try:
            names = await asyncio.wait_for(asyncio.to_thread(actor_names), timeout=STATUS_TIMEOUT_S)
        except TimeoutError:
            names = []
        filter_workers, scp_siblings = filter_workers_in(names), store_scp_siblings_in(names)
        return list(
            await asyncio.gather(
                *(actor_status(name, listens=name == STORE_SCP) for name in PIPELINE_ACTORS),
                *(actor_status(name, listens=True) for name in scp_siblings),
                *(actor_status(name, asks_status=False) for name in filter_workers),
            )
        )

    async def reload_dicom_listener(self) -> None:
        # The first process checks the new port is free before its siblings share it.
        await self._dispatcher.handle(STORE_SCP).start.remote()
        siblings = await asyncio.to_thread(store_scp_siblings)
        await asyncio.gather(*(self._dispatcher.handle(n).start.remote() for n in siblings))
