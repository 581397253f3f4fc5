"""The radiopharmaceutical table the Validator matches against (issues 3 and 5)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import Radiopharmaceutical
from serve.deps import (
    ApiAdmin,
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageAdmin,
    PageViewer,
    Principal,
    SessionDep,
)
from serve.routes.common import flash, parse_form, redirect, render
from serve.schemas import (
    RadiopharmaceuticalCreate,
    RadiopharmaceuticalPublic,
    RadiopharmaceuticalUpdate,
)

api = APIRouter(prefix="/api/v1/radiopharmaceuticals", tags=["radiopharmaceuticals"])
pages = APIRouter(include_in_schema=False)


def list_rows(*, session: Session) -> list[Radiopharmaceutical]:
    return list(session.scalars(select(Radiopharmaceutical).order_by(Radiopharmaceutical.name)))


def _get(row_id: int, session: Session) -> Radiopharmaceutical:
    row = session.get(Radiopharmaceutical, row_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such radiopharmaceutical")
    return row


def _name_taken(name: str, session: Session, *, other_than: int | None = None) -> bool:
    found = session.scalar(select(Radiopharmaceutical.id).where(Radiopharmaceutical.name == name))
    return found is not None and found != other_than


def create(body: RadiopharmaceuticalCreate, *, session: Session) -> Radiopharmaceutical:
    row = Radiopharmaceutical(**body.model_dump())
    session.add(row)
    session.flush()
    return row


@api.get("", response_model=list[RadiopharmaceuticalPublic])
def api_list(session: SessionDep, _user: ApiViewer) -> list[Radiopharmaceutical]:
    return list_rows(session=session)


@api.post("", response_model=RadiopharmaceuticalPublic, status_code=status.HTTP_201_CREATED)
def api_create(
    body: RadiopharmaceuticalCreate, session: SessionDep, _user: ApiAdmin
) -> Radiopharmaceutical:
    if _name_taken(body.name, session):
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.name!r} already exists")
    return create(body, session=session)


@api.patch("/{row_id}", response_model=RadiopharmaceuticalPublic)
def api_update(
    row_id: int, body: RadiopharmaceuticalUpdate, session: SessionDep, _user: ApiAdmin
) -> Radiopharmaceutical:
    row = _get(row_id, session)
    if body.name and _name_taken(body.name, session, other_than=row_id):
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.name!r} already exists")
    for key, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(row, key, value)
    session.flush()
    return row


@api.delete("/{row_id}", status_code=status.HTTP_204_NO_CONTENT)
def api_delete(row_id: int, session: SessionDep, _user: ApiAdmin) -> None:
    session.delete(_get(row_id, session))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


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
        "radiopharmaceuticals.html",
        user=user,
        rows=list_rows(session=session),
        errors=errors or {},
        values=values or {},
        status_code=status_code,
    )


@pages.get("/radiopharmaceuticals", response_class=HTMLResponse)
def rp_page(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    return _page(request, ctx, session, user)


@pages.post("/radiopharmaceuticals", response_model=None)
def rp_create(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageAdmin, form: FormDep
) -> HTMLResponse | RedirectResponse:
    data: dict[str, object] = dict(form)
    data["synonyms"] = _split(form.get("synonyms", ""))
    data["codes"] = _split(form.get("codes", ""))
    body, errors = parse_form(RadiopharmaceuticalCreate, data)
    if body is not None and _name_taken(body.name, session):
        errors = {"name": f"{body.name!r} already exists"}
        body = None
    if body is None:
        return _page(request, ctx, session, user, errors=errors, values=form, status_code=422)
    create(body, session=session)
    flash(request, f"Radiopharmaceutical {body.name} added.")
    return redirect("/radiopharmaceuticals")


@pages.post("/radiopharmaceuticals/{row_id}/delete")
def rp_delete(
    request: Request, row_id: int, session: SessionDep, _user: PageAdmin, _form: FormDep
) -> RedirectResponse:
    row = _get(row_id, session)
    session.delete(row)
    flash(request, f"Radiopharmaceutical {row.name} removed.")
    return redirect("/radiopharmaceuticals")
