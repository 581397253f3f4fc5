"""Login, logout and API tokens (issue 5)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from petray.db.models import User
from petray.errors import ConfigurationError
from petray.site.schemas import TokenCreate, TokenCreated
from petray.site.users import (
    LoginOutcome,
    authenticate,
    create_api_token,
    list_api_tokens,
    revoke_api_token,
)
from serve.deps import (
    SESSION_USER_KEY,
    SESSION_VERSION_KEY,
    ApiViewer,
    ContextDep,
    FormDep,
    OptionalUser,
    PageViewer,
    Principal,
    SessionDep,
)
from serve.routes.audit import AuditDep
from serve.routes.common import flash, redirect, render
from serve.security import csrf_token as csrf_token_of
from serve.security import csrf_valid, password_version, plain_http_login_problem

log = logging.getLogger(__name__)

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["auth"])


def safe_next(target: str | None) -> str:
    """Only same-site paths: an open redirect after login would be a phishing aid."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@pages.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request, ctx: ContextDep, user: OptionalUser, next: str = "/"
) -> HTMLResponse:
    problem = _plain_http_problem(request, ctx)
    errors = {"__all__": problem} if problem else {}
    return render(
        request, ctx, "login.html", user=user, next=safe_next(next), errors=errors, name=""
    )


def _plain_http_problem(request: Request, ctx: ContextDep) -> str:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return plain_http_login_problem(ctx.settings, request.url.scheme, forwarded)


@pages.post("/login", response_model=None)
def login(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    audit: AuditDep,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> HTMLResponse | RedirectResponse:
    target = safe_next(next)

    def again(message: str, code: int) -> HTMLResponse:
        errors = {"__all__": message}
        return render(
            request,
            ctx,
            "login.html",
            user=None,
            status_code=code,
            next=target,
            errors=errors,
            name=username,
        )

    if problem := _plain_http_problem(request, ctx):
        return again(problem, status.HTTP_403_FORBIDDEN)
    if not csrf_valid(request.session, csrf_token):
        return again("Your session expired; please try again.", status.HTTP_403_FORBIDDEN)
    if not username or not password:
        return again("Enter your user name and password.", status.HTTP_422_UNPROCESSABLE_CONTENT)
    # Issue 9: an address that keeps failing waits, whatever user it tries; the user's own
    # lockout holds only for addresses that failed lately (petray.site.login_throttle).
    throttle = ctx.login_throttle
    address = request.client.host if request.client else ""
    wait_s = throttle.retry_after_s(address)
    if wait_s:
        log.warning("login refused: too many failures from one address")
        audit(
            "login.failed", f"user {username}", session=session, outcome="throttled", actor=username
        )
        return again(
            f"Too many failed attempts from your address. Try again in {wait_s} seconds.",
            status.HTTP_429_TOO_MANY_REQUESTS,
        )
    result = authenticate(
        username, password, session=session, enforce_lockout=throttle.has_failed(address)
    )
    if result.outcome != LoginOutcome.OK or result.user is None:
        # Committed with the failure count: the name tried is kept, the password never.
        outcome = "locked" if result.outcome == LoginOutcome.LOCKED else "refused"
        audit("login.failed", f"user {username}", session=session, outcome=outcome, actor=username)
    if result.outcome == LoginOutcome.LOCKED:
        return again(
            f"Too many failed attempts. Try again in {result.retry_after_s} seconds.",
            status.HTTP_429_TOO_MANY_REQUESTS,
        )
    if result.outcome != LoginOutcome.OK or result.user is None:
        throttle.failed(address)
        return again("Wrong user name or password.", status.HTTP_401_UNAUTHORIZED)
    user = result.user
    # A fresh session (and with it a fresh CSRF token) at every login.
    request.session.clear()
    request.session[SESSION_USER_KEY] = user.id
    request.session[SESSION_VERSION_KEY] = password_version(user.password_hash)
    # Created now rather than on the first page: the session lives in a cookie, so two pages
    # loading at once would otherwise each mint a token and the last cookie would win.
    csrf_token_of(request.session)
    audit("login", f"user {user.name}", session=session, actor=user.name, via="console")
    log.info("user id %s logged in", user.id)
    return redirect(target)


@pages.post("/logout")
def logout(
    request: Request, session: SessionDep, user: OptionalUser, audit: AuditDep, _form: FormDep
) -> RedirectResponse:
    if user is not None:
        audit("logout", f"user {user.name}", session=session)
    request.session.clear()
    return redirect("/login")


def _user_row(user: Principal, session: Session) -> User:
    row = session.get(User, user.id)
    if row is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "user no longer exists")
    return row


@pages.get("/account", response_class=HTMLResponse)
def account_page(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    tokens = list_api_tokens(_user_row(user, session), session=session)
    new_token = request.session.pop("new_token", None)
    return render(request, ctx, "account.html", user=user, tokens=tokens, new_token=new_token)


@pages.post("/account/tokens")
def account_token_create(
    request: Request, session: SessionDep, user: PageViewer, form: FormDep, audit: AuditDep
) -> RedirectResponse:
    row, clear = create_api_token(
        _user_row(user, session), session=session, label=form.get("label", "")
    )
    audit("token.create", f"token {row.id}", session=session, label=row.label)
    # Shown once on the next page, then gone from the session.
    request.session["new_token"] = clear
    flash(request, f"API token {row.id} created; copy it now, it is not shown again.")
    return redirect("/account")


@pages.post("/account/tokens/{token_id}/delete")
def account_token_delete(
    request: Request,
    token_id: int,
    session: SessionDep,
    user: PageViewer,
    _form: FormDep,
    audit: AuditDep,
) -> RedirectResponse:
    try:
        revoke_api_token(token_id, session=session, user=_user_row(user, session))
        audit("token.revoke", f"token {token_id}", session=session)
        flash(request, f"API token {token_id} revoked.")
    except ConfigurationError as exc:
        flash(request, str(exc), kind="error")
    return redirect("/account")


@api.get("/me")
def me(user: ApiViewer) -> dict[str, str]:
    return {"name": user.name, "role": user.role}


@api.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(
    body: TokenCreate, session: SessionDep, user: ApiViewer, audit: AuditDep
) -> TokenCreated:
    row, clear = create_api_token(_user_row(user, session), session=session, label=body.label)
    audit("token.create", f"token {row.id}", session=session, label=row.label)
    return TokenCreated(id=row.id, label=row.label, token=clear)


@api.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_token(token_id: int, session: SessionDep, user: ApiViewer, audit: AuditDep) -> None:
    try:
        revoke_api_token(token_id, session=session, user=_user_row(user, session))
    except ConfigurationError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such token") from None
    audit("token.revoke", f"token {token_id}", session=session)
