"""What every actor process does first, and how actors find each other."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

import ray

from actors.names import NAMESPACE, STAGE_ACTORS
from petray.db.engine import make_engine, make_sessionmaker
from petray.domain import Stage
from petray.logfile import install_log_file
from petray.logformat import configure_logging
from petray.settings import Settings
from petray.site.audit import configure_syslog

logger = logging.getLogger(__name__)


def restore_priority(who: str) -> None:
    """Undo Ray's worker niceness (15) for the calling thread and the threads it starts later
    (Linux keeps a niceness per thread). Raising priority needs CAP_SYS_NICE (or a RLIMIT_NICE
    allowance); without it the thread keeps Ray's niceness."""
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    if current <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, thread, 0)
    except PermissionError:
        logger.info("%s keeps niceness %d (no permission to raise its priority)", who, current)


def actor_names() -> list[str]:
    """Names of the named actors of petray's namespace that exist (alive, starting or
    restarting): one GCS call, to filter with actors.names' helpers."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return [str(e["name"]) for e in named if e.get("namespace") == NAMESPACE and e.get("name")]


def init_actor_process(settings: Settings) -> Any:
    """Logging and the process's one engine; returns its session factory."""
    configure_logging(logging.INFO, settings.log_format)
    install_log_file(settings.home)  # petray's own log, for the console's log page (issue 11)
    # pynetdicom logs every PDU at INFO: one line per instance is noise, not operations data.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    configure_syslog(settings.audit_syslog)  # audit events this actor records (issue 10)
    return make_sessionmaker(make_engine(settings.resolved_database_url))


class Dispatcher:
    """Tells the actor that owns a stage about a task; fire and forget (the db holds the truth).

    Handles are looked up on every call (one GCS lookup) rather than cached, so a pipeline
    rebuilt after a crash is found without restarting the callers.
    """

    def handle(self, name: str) -> Any:
        return ray.get_actor(name, namespace=NAMESPACE)

    def submit(self, stage: Stage, task_id: str) -> None:
        name = STAGE_ACTORS.get(stage)
        if name is None:
            return
        try:
            self.handle(name).submit.remote(task_id)
        except ValueError:
            # Not running (yet): the task stays committed in its stage and is picked up on start.
            logger.warning("no actor %s for task %s in %s", name, task_id, stage)


class Background:
    """Keeps fire-and-forget coroutines referenced until they end (asyncio holds them weakly)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def actor_state(handle: Any) -> tuple[str, int]:
    """(state, restarts) of an actor from the GCS: ALIVE, RESTARTING, DEAD, PENDING_CREATION...

    ``ray.util.state`` needs the dashboard, which a gateway may run without; the GCS table it
    reads is the same.
    """
    from ray._private import state

    info = state.actors(actor_id=handle._actor_id.hex())
    return str(info.get("State", "UNKNOWN")), int(info.get("NumRestarts", 0))


def current_actor_restarts() -> int:
    """How many times the calling actor has been restarted, from the GCS.

    Ray's ``was_current_actor_reconstructed`` answers the same but goes through a deprecated
    property that prints a RayDeprecationWarning into the gateway's log at every actor start.
    """
    from ray._private import state

    info = state.actors(actor_id=ray.get_runtime_context().get_actor_id())
    return int(info.get("NumRestarts", 0)) if info else 0
