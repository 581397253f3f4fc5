"""Post-filters: the Gaussian filters that each produce one output series (issues 4 and 5)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import PostFilter
from serve.deps import (
    ApiOperator,
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageOperator,
    PageViewer,
    Principal,
    SessionDep,
)
from serve.routes.common import flash, parse_form, redirect, render
from serve.schemas import FilterCreate, FilterPublic, FilterUpdate

api = APIRouter(prefix="/api/v1/filters", tags=["filters"])
pages = APIRouter(include_in_schema=False)


def list_filters(*, session: Session) -> list[PostFilter]:
    return list(session.scalars(select(PostFilter).order_by(PostFilter.series_number)))


def _get(filter_id: int, session: Session) -> PostFilter:
    row = session.get(PostFilter, filter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such filter")
    return row


def create(body: FilterCreate, *, session: Session) -> PostFilter:
    row = PostFilter(**body.model_dump())
    session.add(row)
    session.flush()
    return row


@api.get("", response_model=list[FilterPublic])
def api_list(session: SessionDep, _user: ApiViewer) -> list[PostFilter]:
    return list_filters(session=session)


@api.post("", response_model=FilterPublic, status_code=status.HTTP_201_CREATED)
def api_create(body: FilterCreate, session: SessionDep, _user: ApiOperator) -> PostFilter:
    return create(body, session=session)


@api.get("/{filter_id}", response_model=FilterPublic)
def api_get(filter_id: int, session: SessionDep, _user: ApiViewer) -> PostFilter:
    return _get(filter_id, session)


@api.patch("/{filter_id}", response_model=FilterPublic)
def api_update(
    filter_id: int, body: FilterUpdate, session: SessionDep, _user: ApiOperator
) -> PostFilter:
    row = _get(filter_id, session)
    for key, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(row, key, value)
    session.flush()
    return row


@api.delete("/{filter_id}", status_code=status.HTTP_204_NO_CONTENT)
def api_delete(filter_id: int, session: SessionDep, _user: ApiOperator) -> None:
    session.delete(_get(filter_id, session))


def _page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: Principal,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        ctx,
        "filters.html",
        user=user,
        filters=list_filters(session=session),
        errors=errors or {},
        values=values or {},
        status_code=status_code,
    )


@pages.get("/filters", response_class=HTMLResponse)
def filters_page(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    return _page(request, ctx, session, user)


@pages.post("/filters", response_model=None)
def filters_create(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageOperator, form: FormDep
) -> HTMLResponse | RedirectResponse:
    data = dict(form)
    data.setdefault("enabled", "false")  # an unchecked box is absent from the form
    body, errors = parse_form(FilterCreate, data)
    if body is None:
        return _page(request, ctx, session, user, errors=errors, values=form, status_code=422)
    row = create(body, session=session)
    flash(request, f"Filter {row.description!r} added.")
    return redirect("/filters")


@pages.post("/filters/{filter_id}/toggle")
def filters_toggle(
    request: Request, filter_id: int, session: SessionDep, _user: PageOperator, _form: FormDep
) -> RedirectResponse:
    row = _get(filter_id, session)
    row.enabled = not row.enabled
    flash(request, f"Filter {row.description!r} {'enabled' if row.enabled else 'disabled'}.")
    return redirect("/filters")


@pages.post("/filters/{filter_id}/delete")
def filters_delete(
    request: Request, filter_id: int, session: SessionDep, _user: PageOperator, _form: FormDep
) -> RedirectResponse:
    row = _get(filter_id, session)
    session.delete(row)
    flash(request, f"Filter {row.description!r} removed.")
    return redirect("/filters")
