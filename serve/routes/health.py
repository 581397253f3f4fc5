"""``GET /api/v1/health`` (no login, for probes) and the metrics summary."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from fastapi import APIRouter
from sqlalchemy import text

import petray
from petray.activity import count_by_state
from petray.db.engine import unit_of_work
from serve.deps import ApiViewer, AppContext, ContextDep, run_db
from serve.schemas import ActorPublic, Health, MetricsSummary

log = logging.getLogger(__name__)

api = APIRouter(prefix="/api/v1", tags=["health"])


def free_disk_mb(path: Path) -> int:
    """Free space of the file system holding ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // (1024 * 1024)


def database_ok(ctx: AppContext) -> bool:
    try:
        with unit_of_work(ctx.session_factory) as session:
            session.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # any driver error means "not healthy", which is the answer
        log.warning("health check: database unavailable: %s", type(exc).__name__)
        return False


@api.get("/health", response_model=Health)
def health(ctx: ContextDep) -> Health:
    return Health(version=petray.__version__, database=database_ok(ctx))


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
                backlog=a.backlog,
                processed=a.processed,
                failed=a.failed,
            )
            for a in actors
        ],
        free_disk_mb=free_disk_mb(ctx.settings.home),
        min_free_disk_mb=ctx.settings.min_free_disk_mb,
    )
