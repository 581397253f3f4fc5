"""Post-filters: the Gaussian filters that each produce one output series (issues 4, 5, 11).

Each filter's series number is its own: two filters numbered alike would send two output
series that a PACS shows as one.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import PostFilter
from petray.errors import ConfigurationError
from petray.site.schemas import FilterCreate, FilterPublic, FilterUpdate
from petray.site.siteconfig import check_series_number_free
from petray.site.users import Role
from serve.deps import FormDep, PageOperator, SessionDep
from serve.routes.audit import AuditDep
from serve.routes.common import flash, redirect
from serve.routes.crud import FieldConflict, Resource, api_router, apply_changes, page_router


def list_filters(*, session: Session) -> list[PostFilter]:
    return list(session.scalars(select(PostFilter).order_by(PostFilter.series_number)))


def _check_series_number(number: int | None, session: Session, *, other_than: int | None) -> None:
    if number is None:
        return
    try:
        check_series_number_free(number, session=session, other_than=other_than)
    except ConfigurationError as exc:
        raise FieldConflict("series_number", str(exc)) from None


def create(body: FilterCreate, *, session: Session) -> PostFilter:
    _check_series_number(body.series_number, session, other_than=None)
    row = PostFilter(**body.model_dump())
    session.add(row)
    session.flush()
    return row


def update(row: PostFilter, body: FilterUpdate, *, session: Session) -> PostFilter:
    _check_series_number(body.series_number, session, other_than=row.id)
    return apply_changes(row, body, session=session)


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
    update=update,
    create_schema=FilterCreate,
    update_schema=FilterUpdate,
    public_schema=FilterPublic,
    write_role=Role.OPERATOR,
    label=lambda row: f"Filter {row.description!r}",
    form_data=_form_data,
    conflict_field="description",
    editable=True,
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
