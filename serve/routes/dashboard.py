"""The dashboard: actors, remote service, disk, and recent tasks by state (issue 5)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.activity import HourBucket, count_by_state, tasks_by_state_per_hour
from petray.domain import State
from petray.siteconfig import effective_remote_url
from serve.deps import ContextDep, PageViewer, run_db
from serve.routes.common import render
from serve.routes.config import probe_remote
from serve.routes.health import free_disk_mb

pages = APIRouter(include_in_schema=False)
DASHBOARD_HOURS = 12


@pages.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, ctx: ContextDep, user: PageViewer) -> HTMLResponse:
    def load(session: Session) -> tuple[dict[str, int], list[HourBucket], str]:
        return (
            count_by_state(session=session),
            tasks_by_state_per_hour(session=session, hours=DASHBOARD_HOURS),
            effective_remote_url(ctx.settings, session=session),
        )

    by_state, hours, remote_url = await run_db(ctx, load)
    actors = await ctx.pipeline.status()
    remote = await run_in_threadpool(probe_remote, ctx.settings, remote_url, 3.0)
    free_mb = await run_in_threadpool(free_disk_mb, ctx.settings.home)
    peak = max([h.total for h in hours] + [1])
    return render(
        request,
        ctx,
        "dashboard.html",
        user=user,
        actors=actors,
        by_state=by_state,
        states=[s.value for s in State],
        hours=hours,
        peak=peak,
        remote=remote,
        free_mb=free_mb,
        min_free_mb=ctx.settings.min_free_disk_mb,
    )
