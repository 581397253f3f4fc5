"""The radiopharmaceutical table the Validator matches against (issues 3 and 5)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from petray.db.models import Radiopharmaceutical
from petray.site.schemas import (
    RadiopharmaceuticalCreate,
    RadiopharmaceuticalPublic,
    RadiopharmaceuticalUpdate,
)
from petray.site.users import Role
from serve.routes.crud import FieldConflict, Resource, api_router, apply_changes, page_router

LIST_FIELDS = ("synonyms", "codes")


def list_rows(*, session: Session) -> list[Radiopharmaceutical]:
    return list(session.scalars(select(Radiopharmaceutical).order_by(Radiopharmaceutical.name)))


def _check_name_free(name: str | None, session: Session, *, other_than: int | None = None) -> None:
    if not name:
        return
    found = session.scalar(select(Radiopharmaceutical.id).where(Radiopharmaceutical.name == name))
    if found is not None and found != other_than:
        raise FieldConflict("name", f"{name!r} already exists")


def create(body: RadiopharmaceuticalCreate, *, session: Session) -> Radiopharmaceutical:
    _check_name_free(body.name, session)
    row = Radiopharmaceutical(**body.model_dump())
    session.add(row)
    session.flush()
    return row


def update(
    row: Radiopharmaceutical, body: RadiopharmaceuticalUpdate, *, session: Session
) -> Radiopharmaceutical:
    _check_name_free(body.name, session, other_than=row.id)
    return apply_changes(row, body, session=session)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def _form_data(form: Mapping[str, str]) -> dict[str, object]:
    data: dict[str, object] = dict(form)
    for name in LIST_FIELDS:
        data[name] = _split(form.get(name, ""))
    return data


RADIOPHARMACEUTICALS: Resource[Radiopharmaceutical] = Resource(
    model=Radiopharmaceutical,
    noun="radiopharmaceutical",
    path="/radiopharmaceuticals",
    template="radiopharmaceuticals.html",
    rows_name="rows",
    list_rows=list_rows,
    create=create,
    update=update,
    create_schema=RadiopharmaceuticalCreate,
    update_schema=RadiopharmaceuticalUpdate,
    public_schema=RadiopharmaceuticalPublic,
    write_role=Role.ADMIN,
    label=lambda row: f"Radiopharmaceutical {row.name}",
    form_data=_form_data,
    editable=True,
)
api = api_router(RADIOPHARMACEUTICALS)
pages = page_router(RADIOPHARMACEUTICALS)
