"""The activity log: DICOM associations and task events, filterable, with CSV export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from petray.site.activity import (
    ActivityEntry,
    ActivityKind,
    ActivityQuery,
    activity_csv,
    list_activity,
)
from petray.site.schemas import ActivityPublic
from serve.deps import ApiViewer, ContextDep, PageViewer, SessionDep
from serve.routes.common import day_range, render

api = APIRouter(prefix="/api/v1/activity", tags=["activity"])
pages = APIRouter(include_in_schema=False)
PAGE_LIMIT = 200
EXPORT_LIMIT = 10_000
LimitParam = Annotated[int, Query(ge=1, le=EXPORT_LIMIT)]


@dataclass(frozen=True)
class ActivityFilter:
    """The activity log's filter, shared by the REST API, the page and both CSV exports."""

    kind: ActivityKind | None = None
    who: Annotated[str | None, Query(max_length=64)] = None
    date_from: date | None = None
    date_to: date | None = None

    def entries(self, limit: int, *, session: Session) -> list[ActivityEntry]:
        since, until = day_range(self.date_from, self.date_to)
        query = ActivityQuery(
            kind=self.kind, who=self.who or None, since=since, until=until, limit=limit
        )
        return list_activity(query, session=session)

    def params(self) -> dict[str, str]:
        return {
            "kind": self.kind or "",
            "who": self.who or "",
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
        }


ActivityFilterDep = Annotated[ActivityFilter, Depends()]


def _csv_response(entries: list[ActivityEntry]) -> Response:
    return Response(
        activity_csv(entries),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="petray-activity.csv"'},
    )


@api.get("", response_model=list[ActivityPublic])
def api_activity(
    session: SessionDep, _user: ApiViewer, where: ActivityFilterDep, limit: LimitParam = PAGE_LIMIT
) -> list[ActivityPublic]:
    return [ActivityPublic(**e.__dict__) for e in where.entries(limit, session=session)]


@api.get("/export.csv", response_class=Response)
def api_activity_csv(
    session: SessionDep,
    _user: ApiViewer,
    where: ActivityFilterDep,
    limit: Annotated[int, Query(ge=1, le=10 * EXPORT_LIMIT)] = EXPORT_LIMIT,
) -> Response:
    return _csv_response(where.entries(limit, session=session))


@pages.get("/activity", response_class=HTMLResponse)
def activity_page(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: PageViewer,
    where: ActivityFilterDep,
    limit: LimitParam = PAGE_LIMIT,
) -> HTMLResponse:
    params = where.params()
    return render(
        request,
        ctx,
        "activity.html",
        user=user,
        entries=where.entries(limit, session=session),
        params=params,
        query=urlencode({k: v for k, v in params.items() if v}),
    )


@pages.get("/activity/export.csv", response_class=Response)
def activity_page_csv(session: SessionDep, _user: PageViewer, where: ActivityFilterDep) -> Response:
    return _csv_response(where.entries(EXPORT_LIMIT, session=session))
