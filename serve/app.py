"""The HTTP app: callback API, REST API and web console (issues 4 and 5).

``create_app`` builds everything from its arguments; nothing happens at import time, so the
Ray Serve replica, the tests and the benchmark each build their own app with their own database
and pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import petray
from petray.errors import InvalidTransition, UnknownTask
from petray.ports import PipelineControl
from petray.settings import Settings
from petray.site import display
from petray.site.audit import configure_syslog
from serve.deps import (
    SAFE_METHODS,
    AppContext,
    CsrfRejected,
    LoginRequired,
    PageForbidden,
    login_url,
    optional_user,
)
from serve.routes import (
    activity,
    audit,
    auth,
    callback,
    config,
    dashboard,
    devices,
    filters,
    health,
    logs,
    radiopharmaceuticals,
    tasks,
    users,
)
from serve.routes.common import render
from serve.routes.crud import API_PREFIX
from serve.security import resolve_secret_key, secure_cookie

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "petray_session"
SESSION_MAX_AGE_S = 12 * 3600
# Everything is served from this origin (the hospital network has no internet); the policy
# makes a stray CDN reference fail loudly in tests instead of silently in the field.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
# Swagger UI sets inline styles; only /docs gets them (its boot script is a file).
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-ancestors 'none'"
)

# Modules with a REST router ``api`` and a console router ``pages``.
RESOURCES = (
    auth,
    tasks,
    devices,
    filters,
    radiopharmaceuticals,
    config,
    activity,
    users,
    audit,
    logs,
)


class AuthenticateFirst:
    """API changes prove who is asking before their body is read (issue 9).

    FastAPI reads and parses a request body before it runs the route's dependencies, so an
    anonymous client could make the app read and parse a large body only to be told 401. Must
    run inside SessionMiddleware (the cookie is one of the two credentials). The route's own
    dependency still checks the role (and CSRF) as before.
    """

    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in SAFE_METHODS
            or not scope["path"].startswith(API_PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        # A Request without ``receive``: headers and session only, the body stays unread.
        user = await run_in_threadpool(optional_user, Request(scope), self.ctx)
        if user is None:
            response = JSONResponse(
                {"detail": "authentication required"},
                status_code=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds the headers every response of the console needs (plain ASGI, cheap per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = DOCS_CSP if scope["path"].startswith("/docs") else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", policy.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_page(message: str) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        ctx: AppContext = request.app.state.petray
        return render(
            request,
            ctx,
            "error.html",
            user=None,
            status_code=status.HTTP_403_FORBIDDEN,
            message=message,
        )

    return handler


def _json_error(
    status_code: int, detail: Callable[[Exception], str]
) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": detail(exc)}, status_code=status_code)

    return handler


def _install_handlers(app: FastAPI) -> None:
    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return Response(
            status_code=status.HTTP_303_SEE_OTHER, headers={"Location": login_url(exc.next_url)}
        )

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageForbidden, _error_page("You do not have permission to do this."))
    app.add_exception_handler(
        CsrfRejected,
        _error_page("The form expired or did not come from this site. Go back, reload and retry."),
    )
    app.add_exception_handler(
        UnknownTask, _json_error(status.HTTP_404_NOT_FOUND, lambda exc: "unknown task")
    )
    app.add_exception_handler(InvalidTransition, _json_error(status.HTTP_409_CONFLICT, str))


def _install_docs(app: FastAPI) -> None:
    """Swagger UI 5 at /docs, from files bundled in serve/static/swagger (issue 11).

    FastAPI's default /docs loads Swagger UI from a CDN, which the hospital network cannot
    reach, and Swagger UI 4 cannot render the OpenAPI 3.1 FastAPI writes. The page boots from a
    script file, so only inline styles (which Swagger UI sets) are allowed on /docs.
    """
    page = HERE / "static" / "swagger" / "index.html"

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(page, media_type="text/html")

    def openapi() -> dict[str, Any]:
        # The API takes a bearer token (an API token from the Account page, or the callback
        # token on /process_ready); declared here so Swagger UI offers "Authorize".
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_display(templates: Jinja2Templates, settings: Settings) -> None:
    """Template filters that show stored values in the site's words and time zone (issue 11)."""
    zone = display.site_zone(settings.timezone)

    def when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
        return display.local_time(value, zone, fmt)

    templates.env.filters.update(
        when=when,
        person=display.person_name,
        dicom_date=display.dicom_date,
        explain=display.explain,
    )
    templates.env.globals["zone_abbreviation"] = lambda: display.zone_abbreviation(zone)
    templates.env.globals["zone_name"] = settings.timezone or "local time"


def create_app(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session],
    pipeline: PipelineControl,
) -> FastAPI:
    """The whole HTTP app. Raises ConfigurationError for an unsafe production setup."""
    secret = resolve_secret_key(settings)
    configure_syslog(settings.audit_syslog)
    app = FastAPI(
        title="petray",
        version=petray.__version__,
        description="DICOM gateway for PET imaging: callback API, REST API and web console.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        # Issue 9: 413 before the body is read when Content-Length is too large, and as soon
        # as a streamed body passes the limit.
        max_body_size=settings.max_request_bytes,
    )
    app.state.petray = ctx = AppContext(
        settings=settings,
        session_factory=session_factory,
        pipeline=pipeline,
        templates=Jinja2Templates(directory=HERE / "templates"),
    )
    _install_display(ctx.templates, settings)
    # Added first, so it runs inside the session middleware added next.
    app.add_middleware(AuthenticateFirst, ctx=ctx)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE_S,
        same_site="lax",
        # The console is plain HTTP on loopback by default; over HTTPS (petray's own or a TLS
        # proxy's in production) the cookie must not travel in clear.
        https_only=secure_cookie(settings),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _install_handlers(app)
    _install_docs(app)
    app.include_router(callback.router)
    app.include_router(health.api)
    app.include_router(dashboard.pages)
    for module in RESOURCES:
        app.include_router(module.api)
        app.include_router(module.pages)
    return app
