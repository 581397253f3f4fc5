"""``GET /api/v1/health`` (no login, for probes) and the metrics summary.

The health report gathers its facts concurrently, each bounded in time, and lets
``petray.site.health`` judge them; the console dashboard renders the same report (issue 8 item 9).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fastapi import APIRouter, FastAPI, Request, Response, status
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

import petray
from petray.db.engine import unit_of_work
from petray.ports import ActorStatus
from petray.site.activity import count_by_state
from petray.site.health import (
    DestinationFact,
    HealthReport,
    Observations,
    PingCache,
    RemoteFact,
    Status,
    assess,
    destination_facts,
    listener_state,
)
from petray.site.schemas import (
    ActorHealth,
    ActorPublic,
    DestinationHealth,
    DiskHealth,
    Health,
    HealthCheck,
    MetricsSummary,
    RemoteHealth,
)
from petray.site.siteconfig import effective_remote_url, get_site_config
from serve.deps import ApiViewer, AppContext, ContextDep, run_db

log = logging.getLogger(__name__)

api = APIRouter(prefix="/api/v1", tags=["health"])

T = TypeVar("T")
# Every fact is gathered at once and each source is bounded, so the report answers within
# about this long even with a hung actor, database or service (actors: STATUS_TIMEOUT_S in
# actors/control.py). Probes usually give up after 1 s.
FACT_TIMEOUT_S = 0.8
REMOTE_URL_TIMEOUT_S = 0.2
REMOTE_PING_TIMEOUT_S = 0.6
# A ping answer, good or bad, is reused this long (see PingCache).
REMOTE_PING_TTL_S = 5.0


def free_disk_mb(path: Path) -> int:
    """Free space of the file system holding ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // (1024 * 1024)


@dataclass(frozen=True)
class DatabaseFacts:
    ok: bool
    error: str = ""
    destinations: list[DestinationFact] | None = None
    reply_to_sender: bool = False


def read_database(ctx: AppContext) -> DatabaseFacts:
    """Is the database there, and what did each destination's last delivery do? Blocking."""
    try:
        with unit_of_work(ctx.session_factory) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not healthy", which is the answer
        # The type only: driver messages may carry the connection URL and its password.
        log.warning("health check: database unavailable: %s", type(exc).__name__)
        return DatabaseFacts(ok=False, error=type(exc).__name__)
    try:
        with unit_of_work(ctx.session_factory) as session:
            return DatabaseFacts(
                ok=True,
                destinations=destination_facts(session=session),
                reply_to_sender=get_site_config(session=session).reply_to_sender,
            )
    except Exception:
        log.exception("health check: could not read the destinations' deliveries")
        return DatabaseFacts(ok=True)


@dataclass
class RemotePing:
    """The app's ping cache; one per app (kept on ``app.state``), never module-global."""

    cache: PingCache
    lock: asyncio.Lock


def _remote_ping(app: FastAPI) -> RemotePing:
    ping: RemotePing | None = getattr(app.state, "health_remote_ping", None)
    if ping is None:
        ping = RemotePing(cache=PingCache(REMOTE_PING_TTL_S), lock=asyncio.Lock())
        app.state.health_remote_ping = ping
    return ping


def _remote_url(ctx: AppContext) -> str:
    try:
        with unit_of_work(ctx.session_factory) as session:
            return effective_remote_url(ctx.settings, session=session)
    except Exception:  # no database: the process setting is the best guess
        return ctx.settings.remote_url


def _ping(ctx: AppContext, url: str) -> RemoteFact:
    from serve.routes.config import probe_remote

    probe = probe_remote(ctx.settings, url, REMOTE_PING_TIMEOUT_S)
    return RemoteFact(reachable=probe.ok, latency_ms=probe.latency_ms, error=probe.message)


async def _bounded(work: Callable[[], T], timeout_s: float) -> T:
    """Run blocking ``work`` in a thread; TimeoutError after ``timeout_s`` (the thread runs on)."""
    return await asyncio.wait_for(run_in_threadpool(work), timeout=timeout_s)


async def observe_remote(ctx: AppContext, app: FastAPI) -> tuple[str, RemoteFact]:
    try:
        url = await _bounded(lambda: _remote_url(ctx), REMOTE_URL_TIMEOUT_S)
    except TimeoutError:
        url = ctx.settings.remote_url
    ping = _remote_ping(app)
    async with ping.lock:  # one ping in flight; concurrent probes reuse its answer
        fact = ping.cache.get(url)
        if fact is None:
            try:
                fact = await _bounded(lambda: _ping(ctx, url), REMOTE_PING_TIMEOUT_S + 0.1)
            except TimeoutError:
                fact = RemoteFact(reachable=False, error="no answer in time")
            ping.cache.put(url, fact)
    return url, fact


@dataclass(frozen=True)
class Observed:
    report: HealthReport
    facts: Observations
    remote_url: str


async def observe(ctx: AppContext, app: FastAPI) -> Observed:
    """Gather every fact concurrently, each within its bound, and judge them."""

    async def database() -> DatabaseFacts:
        try:
            return await _bounded(lambda: read_database(ctx), FACT_TIMEOUT_S)
        except TimeoutError:
            return DatabaseFacts(ok=False, error="no answer in time")

    async def disk() -> int | None:
        try:
            # Where the Store SCP checks its floor before accepting an instance.
            path = ctx.settings.instances_dir
            return await _bounded(lambda: free_disk_mb(path), FACT_TIMEOUT_S)
        except (TimeoutError, OSError):
            return None

    async def actors() -> list[ActorStatus] | None:
        # The Ray implementation bounds each actor itself; this bounds any implementation.
        try:
            return await asyncio.wait_for(ctx.pipeline.status(), timeout=FACT_TIMEOUT_S)
        except TimeoutError:
            return None

    db, statuses, free_mb, (url, remote) = await asyncio.gather(
        database(), actors(), disk(), observe_remote(ctx, app)
    )
    facts = Observations(
        database_ok=db.ok,
        database_error=db.error,
        actors=statuses,
        free_disk_mb=free_mb,
        min_free_disk_mb=ctx.settings.min_free_disk_mb,
        remote=remote,
        destinations=db.destinations,
        reply_to_sender=db.reply_to_sender,
    )
    return Observed(report=assess(facts), facts=facts, remote_url=url)


def health_public(observed: Observed) -> Health:
    facts, report = observed.facts, observed.report
    return Health(
        status=report.status.value,
        version=petray.__version__,
        database=facts.database_ok,
        dicom_listener=listener_state(facts.actors),
        actors=[
            ActorHealth(name=a.name, alive=a.alive, responding=a.responding, restarts=a.restarts)
            for a in facts.actors or ()
        ],
        disk=DiskHealth(free_mb=facts.free_disk_mb, min_free_mb=facts.min_free_disk_mb),
        remote=RemoteHealth(
            reachable=facts.remote.reachable,
            latency_ms=facts.remote.latency_ms,
            error=facts.remote.error,
        ),
        destinations=[
            DestinationHealth(
                name=d.name, state=d.state.value, at=d.at, since=d.since, reason=d.reason
            )
            for d in facts.destinations or ()
        ],
        checks=[
            HealthCheck(
                kind=c.kind.value,
                name=c.name,
                verdict=c.verdict.value,
                reason=c.reason,
                since=c.since,
            )
            for c in report.checks
        ],
    )


@api.get(
    "/health",
    response_model=Health,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Health, "description": "down"}},
)
async def health(request: Request, response: Response, ctx: ContextDep) -> Health:
    """200 when the gateway is ok or degraded, 503 when it cannot do its job."""
    observed = await observe(ctx, request.app)
    if observed.report.status is Status.DOWN:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return health_public(observed)


@api.get("/metrics/summary", response_model=MetricsSummary)
async def metrics_summary(ctx: ContextDep, _user: ApiViewer) -> MetricsSummary:
    by_state = await run_db(ctx, lambda s: count_by_state(session=s))
    actors = await ctx.pipeline.status()
    return MetricsSummary(
        tasks_by_state=by_state,
        actors=[
            ActorPublic(
                name=a.name,
                alive=a.alive,
                responding=a.responding,
                restarts=a.restarts,
                backlog=a.backlog,
                processed=a.processed,
                failed=a.failed,
            )
            for a in actors
        ],
        free_disk_mb=free_disk_mb(ctx.settings.home),
        min_free_disk_mb=ctx.settings.min_free_disk_mb,
    )
