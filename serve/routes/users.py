"""Console users: list, create, change role, reset password, unlock, delete (issue 5, admins only).

The rules (password length, the last admin, not yourself) live in ``petray.site.users``; this module
maps them to HTTP statuses and to errors shown next to the form field they concern.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal

from fastapi import HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from petray.db.models import User
from petray.errors import ConfigurationError
from petray.site.schemas import PasswordReset, UserCreate, UserPublic, UserRoleUpdate
from petray.site.users import (
    MIN_PASSWORD_LENGTH,
    Role,
    change_role,
    create_user,
    delete_user,
    list_users,
    set_password,
    unlock,
)
from serve.deps import (
    SESSION_VERSION_KEY,
    ApiAdmin,
    ContextDep,
    FormDep,
    PageAdmin,
    Principal,
    SessionDep,
)
from serve.routes.audit import AuditDep
from serve.routes.common import flash, parse_form, redirect
from serve.routes.crud import Resource, api_router, page_router
from serve.security import password_version

log = logging.getLogger(__name__)
Form = Mapping[str, str]


def create(body: UserCreate, *, session: Session) -> User:
    return create_user(session=session, name=body.name, password=body.password, role=body.role)


def update(account: User, body: UserRoleUpdate, *, session: Session) -> User:
    change_role(account, body.role, session=session)
    return account


def remove(account: User, *, session: Session, user: Principal) -> None:
    delete_user(account, session=session, acting_user_id=user.id)
    log.info("user id %s deleted by user id %s", account.id, user.id)


USERS: Resource[User] = Resource(
    model=User,
    noun="user",
    path="/users",
    template="users.html",
    rows_name="users",
    list_rows=list_users,
    create=create,
    update=update,
    create_schema=UserCreate,
    update_schema=UserRoleUpdate,
    public_schema=UserPublic,
    write_role=Role.ADMIN,
    read_role=Role.ADMIN,
    label=lambda account: f"User {account.name}",
    remove=remove,
    page_context=lambda: {"now": datetime.now(UTC), "min_password": MIN_PASSWORD_LENGTH},
)
api = api_router(USERS)
pages = page_router(USERS)


def _reset_password(request: Request, account: User, body: PasswordReset, user: Principal) -> None:
    set_password(account, body.password)
    if account.id == user.id:
        # The session cookie carries a password version so that a reset signs a user out
        # everywhere; the admin who reset their own password stays signed in here.
        request.session[SESSION_VERSION_KEY] = password_version(account.password_hash)
    log.info("password of user id %s reset by user id %s", account.id, user.id)


@api.post("/{row_id}/password", response_model=UserPublic)
def api_reset_password(
    request: Request,
    row_id: int,
    body: PasswordReset,
    session: SessionDep,
    user: ApiAdmin,
    audit: AuditDep,
) -> User:
    account = USERS.get(row_id, session)
    try:
        _reset_password(request, account, body, user)
    except ConfigurationError as exc:  # the policy's rules that need the user's name
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audit("user.password", USERS.label(account), session=session, id=account.id)
    return account


@api.post("/{row_id}/unlock", response_model=UserPublic)
def api_unlock(row_id: int, session: SessionDep, _user: ApiAdmin, audit: AuditDep) -> User:
    account = USERS.get(row_id, session)
    unlock(account)
    audit("user.unlock", USERS.label(account), session=session, id=account.id)
    return account


def _change_role(
    request: Request, account: User, form: Form, user: Principal, session: Session
) -> str:
    change_role(account, form.get("role", ""), session=session)
    return f"User {account.name} is now {account.role}."


def _password(
    request: Request, account: User, form: Form, user: Principal, session: Session
) -> str:
    body, errors = parse_form(PasswordReset, form)
    if body is None:
        raise ConfigurationError(next(iter(errors.values())))
    _reset_password(request, account, body, user)
    return f"Password of {account.name} reset; their sessions are signed out."


def _unlock(request: Request, account: User, form: Form, user: Principal, session: Session) -> str:
    unlock(account)
    return f"User {account.name} unlocked."


# Each per-row form: what it does, and the field next to which its error is shown.
ROW_ACTIONS: dict[str, Callable[[Request, User, Form, Principal, Session], str]] = {
    "role": _change_role,
    "password": _password,
    "unlock": _unlock,
}
RowAction = Literal["role", "password", "unlock"]


@pages.post("/users/{row_id}/{action}", response_model=None)
def users_row_action(
    request: Request,
    row_id: int,
    action: RowAction,
    ctx: ContextDep,
    session: SessionDep,
    user: PageAdmin,
    form: FormDep,
    audit: AuditDep,
) -> HTMLResponse | RedirectResponse:
    """A per-row form; its error is shown next to that row's field and nothing is saved."""
    account = USERS.get(row_id, session)
    try:
        done = ROW_ACTIONS[action](request, account, form, user, session)
        detail = {"role": account.role} if action == "role" else {}
        audit(f"user.{action}", USERS.label(account), session=session, id=account.id, **detail)
    except ConfigurationError as exc:
        session.rollback()
        return USERS.page(
            request,
            ctx,
            session,
            user,
            row_errors={row_id: {action: str(exc)}},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    flash(request, done)
    return redirect(USERS.path)
