"""Helpers shared by the page routes: rendering with the login context, flash messages, forms."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ValidationError

from serve.deps import AppContext, Principal
from serve.security import CSRF_FORM_FIELD, csrf_token

M = TypeVar("M", bound=BaseModel)
FLASH_KEY = "flash"
RAY_DASHBOARD_HOST = "127.0.0.1"
RAY_DASHBOARD_DEFAULT_PORT = 8265


def flash(request: Request, message: str, *, kind: str = "ok") -> None:
    """A one-time message shown on the next page (after a redirect-after-POST)."""
    messages = list(request.session.get(FLASH_KEY, []))
    messages.append({"kind": kind, "text": message})
    request.session[FLASH_KEY] = messages[-5:]


def render(
    request: Request,
    ctx: AppContext,
    template: str,
    *,
    user: Principal | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    messages = request.session.pop(FLASH_KEY, [])
    base = {
        "user": user,
        "csrf_token": csrf_token(request.session),
        "csrf_field": CSRF_FORM_FIELD,
        "messages": messages,
        # The port the gateway chose at start (issue 10: 8265 may be taken by another Ray).
        "ray_dashboard_url": f"http://{RAY_DASHBOARD_HOST}:"
        f"{ctx.settings.dashboard_port or RAY_DASHBOARD_DEFAULT_PORT}",
        "path": request.url.path,
    }
    return ctx.templates.TemplateResponse(
        request, template, {**base, **context}, status_code=status_code
    )


TimeRange = tuple[datetime | None, datetime | None]


def day_range(date_from: date | None, date_to: date | None) -> TimeRange:
    """Calendar days (both ends included) as a half-open UTC interval for a ``created`` filter."""
    since = None if date_from is None else datetime.combine(date_from, time.min, tzinfo=UTC)
    if date_to is None:
        return since, None
    return since, datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=UTC)


def redirect(url: str) -> RedirectResponse:
    # 303 turns the browser's POST into a GET, so reloading the result page never re-posts.
    return RedirectResponse(url, status_code=303)


def checkbox(form: Mapping[str, str], name: str) -> bool:
    return form.get(name, "") in ("on", "true", "1", "yes")


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Validation errors by form field name, for display next to each field."""
    errors: dict[str, str] = {}
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "__all__"
        message = str(err["msg"]).removeprefix("Value error, ")
        errors.setdefault(field, message)
    return errors


def parse_form(model: type[M], data: Mapping[str, Any]) -> tuple[M | None, dict[str, str]]:
    """Validate form values with an API schema; empty optional fields count as absent."""
    # A password of spaces is a value to refuse with its own reason, not an absent field.
    cleaned = {
        k: v
        for k, v in data.items()
        if not (isinstance(v, str) and (v if k == "password" else v.strip()) == "")
    }
    try:
        return model.model_validate(cleaned), {}
    except ValidationError as exc:
        return None, field_errors(exc)
