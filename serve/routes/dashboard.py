"""The dashboard: health, actors, remote service, disk, destinations and recent tasks (issues 5, 8).

The health part is the very report ``GET /api/v1/health`` answers, so the console never shows
green while the API says degraded or down.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from petray.domain import State
from petray.site.activity import HourBucket, count_by_state, tasks_by_state_per_hour
from petray.site.health import CheckKind, Status, Verdict
from petray.site.siteconfig import everyone_refused
from serve.deps import ContextDep, PageViewer, run_db
from serve.routes.common import render
from serve.routes.health import observe

pages = APIRouter(include_in_schema=False)
DASHBOARD_HOURS = 12
# Badge classes of app.css; "bad" is the one existing pages use for failures.
VERDICT_BADGES = {
    Verdict.OK: "ok",
    Verdict.WARN: "warn",
    Verdict.FAIL: "bad",
    Verdict.UNKNOWN: "unknown",
}
STATUS_BADGES = {Status.OK: "ok", Status.DEGRADED: "warn", Status.DOWN: "bad"}
GATEWAY_CHECKS = (
    CheckKind.DATABASE,
    CheckKind.DICOM_LISTENER,
    CheckKind.DISK,
    CheckKind.REMOTE_SERVICE,
)


@pages.get("/", response_class=HTMLResponse)
async def dashboard(request: Request, ctx: ContextDep, user: PageViewer) -> HTMLResponse:
    def load(session: Session) -> tuple[dict[str, int], list[HourBucket], str]:
        return (
            count_by_state(session=session),
            tasks_by_state_per_hour(session=session, hours=DASHBOARD_HOURS),
            everyone_refused(session=session),
        )

    by_state, hours, sources_warning = await run_db(ctx, load)
    observed = await observe(ctx, request.app)
    report = observed.report
    actor_checks = {c.name: c for c in report.checks if c.kind is CheckKind.ACTOR}
    peak = max([h.total for h in hours] + [1])
    return render(
        request,
        ctx,
        "dashboard.html",
        user=user,
        status=report.status.value,
        status_badge=STATUS_BADGES[report.status],
        problems=report.problems,
        badges=VERDICT_BADGES,
        now=datetime.now(UTC),
        actors=[(a, actor_checks.get(a.name)) for a in observed.facts.actors or ()],
        gateway_checks=[c for c in report.checks if c.kind in GATEWAY_CHECKS],
        destination_checks=[c for c in report.checks if c.kind is CheckKind.DESTINATION],
        destinations_known=observed.facts.destinations is not None,
        remote_url=observed.remote_url,
        by_state=by_state,
        states=[s.value for s in State],
        hours=hours,
        peak=peak,
        sources_warning=sources_warning,
    )
