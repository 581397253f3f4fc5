"""One implementation of a table's REST API and console page (issue 5).

Devices, post-filters, radiopharmaceuticals and users differ in data (schemas, roles, wording,
how a form maps to a schema, deletion rules), not in code: each module describes its table with
a ``Resource`` and gets the list/create/read/update/delete API and the page with its add, edit
and remove forms from here; a module adds only the routes particular to it (C-ECHO, toggle...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from petray.errors import ConfigurationError
from petray.site.users import Role
from serve.deps import (
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageViewer,
    Principal,
    SessionDep,
    require_role,
)
from serve.routes.audit import AuditDep, Auditor, safe_values
from serve.routes.common import flash, parse_form, redirect, render

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
R_contra = TypeVar("R_contra", contravariant=True)
API_PREFIX = "/api/v1"
# Row ids are 64-bit signed integers in SQLite and PostgreSQL (BIGINT at most).
MAX_ROW_ID = 2**63 - 1


class FieldConflict(ConfigurationError):
    """A write the schema accepts but the table refuses (a duplicate name), tied to a form field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.field_name, str(self)))


class Lister(Protocol[R]):
    def __call__(self, *, session: Session) -> list[R]: ...


class Creator(Protocol[R_co]):
    def __call__(self, body: Any, /, *, session: Session) -> R_co: ...


class Updater(Protocol[R]):
    def __call__(self, row: R, body: Any, /, *, session: Session) -> R: ...


class Remover(Protocol[R_contra]):
    def __call__(self, row: R_contra, /, *, session: Session, user: Principal) -> None: ...


def delete_row(row: object, /, *, session: Session, user: Principal) -> None:
    session.delete(row)


def apply_changes(row: R, body: BaseModel, *, session: Session) -> R:
    """Set the fields an update schema carries (absent and null fields leave a column alone)."""
    for key, value in body.model_dump(exclude_unset=True, exclude_none=True).items():
        setattr(row, key, value)
    session.flush()
    return row


def form_values(row: object, names: list[str]) -> dict[str, str]:
    """A row as the strings an edit form shows (checkboxes read "true", lists comma-joined)."""
    values: dict[str, str] = {}
    for name in names:
        value = getattr(row, name)
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif isinstance(value, list):
            values[name] = ", ".join(str(v) for v in value)
        else:
            values[name] = str(value)
    return values


@dataclass(frozen=True)
class Resource(Generic[R]):
    """A table as the console and REST API see it.

    Routes take the caller as a viewer (the principal to render for) and check ``read_role`` and
    ``write_role`` as route dependencies, so one signature serves every resource.
    """

    model: type[R]
    noun: str  # "device": in 404s and the API tag
    path: str  # "/devices": the page; the API lives under /api/v1 + path
    template: str
    rows_name: str  # the template's name for the row list
    list_rows: Lister[R]
    create: Creator[R]
    update: Updater[R]
    create_schema: type[BaseModel]
    update_schema: type[BaseModel]
    public_schema: type[BaseModel]
    write_role: Role
    label: Callable[[R], str]  # "Device pacs", for flash messages
    read_role: Role = Role.VIEWER
    remove: Remover[R] = delete_row  # a table with rules about deletion checks them here
    # Form strings to schema input: unchecked boxes are absent from a posted form, lists arrive
    # as one comma-separated field.
    form_data: Callable[[Mapping[str, str]], dict[str, object]] = dict
    conflict_field: str = "name"  # where a plain ConfigurationError is shown on the form
    page_context: Callable[[], dict[str, object]] = dict  # more template values, per request
    # A row's values as its edit form shows them (e.g. secrets left blank).
    edit_values: Callable[[R, dict[str, str]], dict[str, str]] = lambda row, values: values
    editable: bool = False

    def get(self, row_id: int, session: Session) -> R:
        # An id no row can have is not found, not a 500 from the driver's integer overflow
        # (issue 9: found by the API fuzz, /api/v1/filters/9223372036854775808).
        row = session.get(self.model, row_id) if 1 <= row_id <= MAX_ROW_ID else None
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {self.noun}")
        return row

    def page(
        self,
        request: Request,
        ctx: AppContext,
        session: Session,
        user: Principal,
        *,
        errors: dict[str, str] | None = None,
        values: Mapping[str, str] | None = None,
        editing: R | None = None,
        status_code: int = status.HTTP_200_OK,
        **extra: Any,
    ) -> HTMLResponse:
        return render(
            request,
            ctx,
            self.template,
            user=user,
            status_code=status_code,
            errors=errors or {},
            values=dict(values or {}),
            editing=editing,
            **{self.rows_name: self.list_rows(session=session)},
            **self.page_context(),
            **extra,
        )

    def audit_create(self, audit: Auditor, row: R, body: BaseModel, session: Session) -> None:
        audit(
            f"{self.noun}.create",
            self.label(row),
            session=session,
            id=getattr(row, "id", None),
            values=safe_values(body),
        )

    def audit_update(self, audit: Auditor, row: R, body: BaseModel, session: Session) -> None:
        audit(
            f"{self.noun}.update",
            self.label(row),
            session=session,
            id=getattr(row, "id", None),
            changed=safe_values(body),
        )

    def form_errors(self, exc: ConfigurationError) -> dict[str, str]:
        name = exc.field_name if isinstance(exc, FieldConflict) else self.conflict_field
        return {name: str(exc)}


def _conflict(exc: ConfigurationError) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, str(exc))


def _with_body(endpoint: Callable[..., Any], schema: type[BaseModel]) -> Callable[..., Any]:
    # FastAPI reads the request body's schema from the annotation; the schema is data of the
    # resource here, so it is set on the generated endpoint rather than written in its source.
    endpoint.__annotations__["body"] = schema
    return endpoint


def api_router(res: Resource[R]) -> APIRouter:
    """``/api/v1{path}``: list and read for viewers, create/update/delete for ``write_role``."""
    api = APIRouter(prefix=API_PREFIX + res.path, tags=[res.path.strip("/")])
    reader = [require_role(res.read_role)]
    writer = [require_role(res.write_role)]
    public = res.public_schema

    def list_rows(session: SessionDep) -> list[R]:
        return res.list_rows(session=session)

    def create(body: Any, session: SessionDep, audit: AuditDep) -> R:
        try:
            row = res.create(body, session=session)
        except ConfigurationError as exc:
            raise _conflict(exc) from None
        res.audit_create(audit, row, body, session)
        return row

    def read(row_id: int, session: SessionDep) -> R:
        return res.get(row_id, session)

    def update(row_id: int, body: Any, session: SessionDep, audit: AuditDep) -> R:
        try:
            row = res.update(res.get(row_id, session), body, session=session)
        except ConfigurationError as exc:
            raise _conflict(exc) from None
        res.audit_update(audit, row, body, session)
        return row

    def remove(row_id: int, session: SessionDep, user: ApiViewer, audit: AuditDep) -> None:
        row = res.get(row_id, session)
        target = res.label(row)
        try:
            res.remove(row, session=session, user=user)
        except ConfigurationError as exc:
            raise _conflict(exc) from None
        audit(f"{res.noun}.delete", target, session=session, id=row_id)

    list_model: Any = list[public]  # type: ignore[valid-type]
    for path, method, endpoint, model, code, dependencies in (
        ("", "GET", list_rows, list_model, status.HTTP_200_OK, reader),
        (
            "",
            "POST",
            _with_body(create, res.create_schema),
            public,
            status.HTTP_201_CREATED,
            writer,
        ),
        ("/{row_id}", "GET", read, public, status.HTTP_200_OK, reader),
        ("/{row_id}", "PATCH", _with_body(update, res.update_schema), public, 200, writer),
        ("/{row_id}", "DELETE", remove, None, status.HTTP_204_NO_CONTENT, writer),
    ):
        api.add_api_route(
            path,
            endpoint,
            methods=[method],
            response_model=model,
            status_code=code,
            dependencies=dependencies,
        )
    return api


def page_router(res: Resource[R]) -> APIRouter:
    """The console page: the table for viewers, add/remove (and edit) forms for ``write_role``."""
    pages = APIRouter(include_in_schema=False)
    reader = [require_role(res.read_role, page=True)]
    writer = [require_role(res.write_role, page=True)]

    def show(
        request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
    ) -> HTMLResponse:
        return res.page(request, ctx, session, user)

    def add(
        request: Request,
        ctx: ContextDep,
        session: SessionDep,
        user: PageViewer,
        form: FormDep,
        audit: AuditDep,
    ) -> HTMLResponse | RedirectResponse:
        body, errors = parse_form(res.create_schema, res.form_data(form))
        if body is not None:
            try:
                row = res.create(body, session=session)
            except ConfigurationError as exc:
                errors = res.form_errors(exc)
            else:
                res.audit_create(audit, row, body, session)
                flash(request, f"{res.label(row)} added.")
                return redirect(res.path)
        return res.page(request, ctx, session, user, errors=errors, values=form, status_code=422)

    def remove(
        request: Request,
        row_id: int,
        session: SessionDep,
        user: PageViewer,
        _form: FormDep,
        audit: AuditDep,
    ) -> RedirectResponse:
        row = res.get(row_id, session)
        target = res.label(row)
        try:
            res.remove(row, session=session, user=user)
        except ConfigurationError as exc:
            flash(request, str(exc), kind="error")
        else:
            audit(f"{res.noun}.delete", target, session=session, id=row_id)
            flash(request, f"{res.label(row)} removed.")
        return redirect(res.path)

    def edit(
        request: Request, row_id: int, ctx: ContextDep, session: SessionDep, user: PageViewer
    ) -> HTMLResponse:
        row = res.get(row_id, session)
        values = res.edit_values(row, form_values(row, list(res.update_schema.model_fields)))
        return res.page(request, ctx, session, user, values=values, editing=row)

    def save(
        request: Request,
        row_id: int,
        ctx: ContextDep,
        session: SessionDep,
        user: PageViewer,
        form: FormDep,
        audit: AuditDep,
    ) -> HTMLResponse | RedirectResponse:
        row = res.get(row_id, session)
        body, errors = parse_form(res.update_schema, res.form_data(form))
        if body is not None:
            try:
                res.update(row, body, session=session)
            except ConfigurationError as exc:
                # Nothing half-applied reaches the database: the unit of work rolls back.
                session.rollback()
                errors = res.form_errors(exc)
            else:
                res.audit_update(audit, row, body, session)
                flash(request, f"{res.label(row)} saved.")
                return redirect(res.path)
        return res.page(
            request, ctx, session, user, errors=errors, values=form, editing=row, status_code=422
        )

    item = res.path + "/{row_id}"
    routes: list[tuple[str, str, Callable[..., Any], list[Any]]] = [
        (res.path, "GET", show, reader),
        (res.path, "POST", add, writer),
        (item + "/delete", "POST", remove, writer),
    ]
    if res.editable:
        routes += [(item + "/edit", "GET", edit, writer), (item + "/edit", "POST", save, writer)]
    for path, method, endpoint, dependencies in routes:
        pages.add_api_route(
            path, endpoint, methods=[method], response_model=None, dependencies=dependencies
        )
    return pages
