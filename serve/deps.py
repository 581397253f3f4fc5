"""Typed dependencies: the app context, a unit of work per request, the current user and roles.

Pages and the REST API share the same roles; they differ in how a missing login is answered
(a redirect to the login page, or 401 with ``WWW-Authenticate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from petray.db.engine import unit_of_work
from petray.db.models import User
from petray.ports import PipelineControl
from petray.settings import Settings
from petray.site.login_throttle import LoginThrottle
from petray.site.users import Role, has_role, user_for_token
from serve.security import (
    CSRF_FORM_FIELD,
    CSRF_HEADER,
    bearer_token,
    csrf_valid,
    password_version,
)

T = TypeVar("T")
SESSION_USER_KEY = "uid"
SESSION_VERSION_KEY = "pwv"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class AppContext:
    """Everything a request handler may reach; built once by ``create_app``."""

    settings: Settings
    session_factory: sessionmaker[Session]
    pipeline: PipelineControl
    templates: Jinja2Templates
    # Failed logins per client address (issue 9), for the life of this HTTP process.
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.petray
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with unit_of_work(ctx.session_factory) as session:
        yield session


# scope="function": the commit happens before the response leaves, so a client that saw 200
# always finds its change in the next request, and a failed commit is a 500, not a silent loss.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


async def run_db(ctx: AppContext, work: Callable[[Session], T]) -> T:
    """Run ``work`` in its own committed unit of work off the event loop (for async handlers)."""

    def _run() -> T:
        with unit_of_work(ctx.session_factory) as session:
            return work(session)

    return await run_in_threadpool(_run)


@dataclass(frozen=True)
class Principal:
    """The authenticated user of a request (a plain value: no ORM row leaves the session)."""

    id: int
    name: str
    role: Role
    via_token: bool = False

    def can(self, needed: Role) -> bool:
        return has_role(self.role, needed)

    @property
    def sees_patient_data(self) -> bool:
        # Issue 5: viewers get a read-only console without patient names.
        return self.can(Role.OPERATOR)


class LoginRequired(Exception):
    """A page needs a login; answered by a redirect to /login (see serve.app)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class PageForbidden(Exception):
    """A logged-in user lacks the role for a page; answered by a 403 page."""


def _principal(user: User, *, via_token: bool) -> Principal:
    return Principal(id=user.id, name=user.name, role=Role(user.role), via_token=via_token)


def _user_from_cookie(request: Request, session: Session) -> Principal | None:
    uid = request.session.get(SESSION_USER_KEY)
    if not isinstance(uid, int):
        return None
    user = session.get(User, uid)
    if user is None or request.session.get(SESSION_VERSION_KEY) != password_version(
        user.password_hash
    ):
        request.session.clear()
        return None
    return _principal(user, via_token=False)


def optional_user(request: Request, ctx: ContextDep) -> Principal | None:
    """Bearer API token first (scripts), else the signed session cookie (browsers)."""
    with unit_of_work(ctx.session_factory) as session:
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None:
            user = user_for_token(token, session=session)
            return None if user is None else _principal(user, via_token=True)
        return _user_from_cookie(request, session)


OptionalUser = Annotated[Principal | None, Depends(optional_user)]


def _api_user(request: Request, user: OptionalUser) -> Principal:
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # A cookie rides along with any cross-site request, so cookie-authenticated changes must
    # prove they come from our own pages; a bearer token cannot be sent by another site.
    cookie_change = not user.via_token and request.method not in SAFE_METHODS
    if cookie_change and not csrf_valid(request.session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or invalid CSRF token")
    return user


def _page_user(request: Request, user: OptionalUser) -> Principal:
    if user is None or user.via_token:
        raise LoginRequired(
            request.url.path + (f"?{request.url.query}" if request.url.query else "")
        )
    return user


def api_role(needed: Role) -> Callable[..., Principal]:
    def dependency(user: Annotated[Principal, Depends(_api_user)]) -> Principal:
        if not user.can(needed):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs the {needed} role")
        return user

    return dependency


def page_role(needed: Role) -> Callable[..., Principal]:
    def dependency(user: Annotated[Principal, Depends(_page_user)]) -> Principal:
        if not user.can(needed):
            raise PageForbidden(f"needs the {needed} role")
        return user

    return dependency


def require_role(needed: Role, *, page: bool = False) -> Any:
    """``Depends`` for a route that needs ``needed`` (or a higher role)."""
    return Depends(page_role(needed) if page else api_role(needed))


ApiViewer = Annotated[Principal, require_role(Role.VIEWER)]
ApiOperator = Annotated[Principal, require_role(Role.OPERATOR)]
ApiAdmin = Annotated[Principal, require_role(Role.ADMIN)]
PageViewer = Annotated[Principal, require_role(Role.VIEWER, page=True)]
PageOperator = Annotated[Principal, require_role(Role.OPERATOR, page=True)]
PageAdmin = Annotated[Principal, require_role(Role.ADMIN, page=True)]
CurrentUser = ApiViewer


class CsrfRejected(Exception):
    """A form arrived without the session's CSRF token."""


async def verified_form(request: Request) -> dict[str, str]:
    """The posted form as plain strings, after checking its CSRF token."""
    form = await request.form()
    if not csrf_valid(request.session, str(form.get(CSRF_FORM_FIELD) or "")):
        raise CsrfRejected()
    return {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FORM_FIELD}


FormDep = Annotated[dict[str, str], Depends(verified_form)]


def login_url(next_url: str) -> str:
    return f"/login?next={quote(next_url, safe='/')}"
