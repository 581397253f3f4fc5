"""Post-filters: the Gaussian filters that each produce one output series (issues 4 and 5)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import PostFilter
from petray.users import Role
from serve.deps import FormDep, PageOperator, SessionDep
from serve.routes.audit import AuditDep
from serve.routes.common import flash, redirect
from serve.routes.crud import Resource, api_router, apply_changes, page_router
from serve.schemas import FilterCreate, FilterPublic, FilterUpdate


def list_filters(*, session: Session) -> list[PostFilter]:
    return list(session.scalars(select(PostFilter).order_by(PostFilter.series_number)))


def create(body: FilterCreate, *, session: Session) -> PostFilter:
    row = PostFilter(**body.model_dump())
    session.add(row)
    session.flush()
    return row


def _form_data(form: Mapping[str, str]) -> dict[str, object]:
    # An unchecked box is absent from the form; absent must mean "disabled", not "default".
    return {"enabled": "false", **form}


FILTERS: Resource[PostFilter] = Resource(
    model=PostFilter,
    noun="filter",
    path="/filters",
    template="filters.html",
    rows_name="filters",
    list_rows=list_filters,
    create=create,
    update=apply_changes,
    create_schema=FilterCreate,
    update_schema=FilterUpdate,
    public_schema=FilterPublic,
    write_role=Role.OPERATOR,
    label=lambda row: f"Filter {row.description!r}",
    form_data=_form_data,
    conflict_field="description",
)
api = api_router(FILTERS)
pages = page_router(FILTERS)


@pages.post("/filters/{filter_id}/toggle")
def filters_toggle(
    request: Request,
    filter_id: int,
    session: SessionDep,
    _user: PageOperator,
    _form: FormDep,
    audit: AuditDep,
) -> RedirectResponse:
    row = FILTERS.get(filter_id, session)
    row.enabled = not row.enabled
    audit(
        "filter.update",
        FILTERS.label(row),
        session=session,
        id=row.id,
        changed={"enabled": row.enabled},
    )
    flash(request, f"{FILTERS.label(row)} {'enabled' if row.enabled else 'disabled'}.")
    return redirect(FILTERS.path)
