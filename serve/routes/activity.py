"""The activity log: DICOM associations and task events, filterable, with CSV export."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from petray.activity import ActivityQuery, activity_csv, list_activity
from serve.deps import ApiViewer, ContextDep, PageViewer, SessionDep
from serve.routes.common import render
from serve.schemas import ActivityPublic

api = APIRouter(prefix="/api/v1/activity", tags=["activity"])
pages = APIRouter(include_in_schema=False)
Kind = Literal["association", "task"]


def build_query(
    kind: Kind | None, who: str | None, date_from: date | None, date_to: date | None, limit: int
) -> ActivityQuery:
    since = datetime.combine(date_from, time.min, tzinfo=UTC) if date_from else None
    until = datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=UTC) if date_to else None
    return ActivityQuery(kind=kind, who=who or None, since=since, until=until, limit=limit)


def _csv_response(text: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="petray-activity.csv"'},
    )


@api.get("", response_model=list[ActivityPublic])
def api_activity(
    session: SessionDep,
    _user: ApiViewer,
    kind: Kind | None = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[ActivityPublic]:
    entries = list_activity(build_query(kind, who, date_from, date_to, limit), session=session)
    return [ActivityPublic(**e.__dict__) for e in entries]


@api.get("/export.csv", response_class=Response)
def api_activity_csv(
    session: SessionDep,
    _user: ApiViewer,
    kind: Kind | None = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    entries = list_activity(build_query(kind, who, date_from, date_to, limit), session=session)
    return _csv_response(activity_csv(entries))


@pages.get("/activity", response_class=HTMLResponse)
def activity_page(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: PageViewer,
    kind: Kind | None = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> HTMLResponse:
    entries = list_activity(build_query(kind, who, date_from, date_to, limit), session=session)
    params = {
        "kind": kind or "",
        "who": who or "",
        "date_from": date_from.isoformat() if date_from else "",
        "date_to": date_to.isoformat() if date_to else "",
    }
    query = urlencode({k: v for k, v in params.items() if v})
    return render(
        request, ctx, "activity.html", user=user, entries=entries, params=params, query=query
    )


@pages.get("/activity/export.csv", response_class=Response)
def activity_page_csv(
    session: SessionDep,
    _user: PageViewer,
    kind: Kind | None = None,
    who: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
) -> Response:
    entries = list_activity(build_query(kind, who, date_from, date_to, 10_000), session=session)
    return _csv_response(activity_csv(entries))
