"""The audit trail over HTTP (issue 10): who did what, for admins, as a page, an API and JSON lines.

Also the ``Auditor`` dependency the other routes record their changes with: it knows who is
asking and from where, so a route only says what happened, in the same unit of work as the change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from petray.db.engine import unit_of_work
from petray.site import audit
from serve.deps import (
    ApiAdmin,
    AppContext,
    ContextDep,
    OptionalUser,
    PageAdmin,
    SessionDep,
    run_db,
)
from serve.routes.common import day_range, render

api = APIRouter(prefix="/api/v1/audit", tags=["audit"])
pages = APIRouter(include_in_schema=False)
PAGE_LIMIT = 200
JSONL = "application/x-ndjson"
# Never copied into an audit row, whatever schema they come in.
SECRET_FIELDS = frozenset({"password", "token", "secret", "tls_key", "stow_token", "stow_basic"})


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    source: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


@dataclass(frozen=True)
class Auditor:
    """Records the changes one request makes, as its user, from its address."""

    actor: str
    source: str
    via: str  # "console" (session cookie), "token" (API token) or "anonymous"

    def __call__(
        self,
        action: str,
        target: str = "",
        *,
        session: Session,
        outcome: str = "ok",
        actor: str | None = None,
        **detail: Any,
    ) -> None:
        audit.record(
            action,
            session=session,
            actor=self.actor if actor is None else actor,
            source=self.source,
            target=target,
            outcome=outcome,
            detail={"via": self.via, **detail},
        )

    async def separately(self, ctx: AppContext, action: str, target: str = "", **kw: Any) -> None:
        """Record in a unit of work of its own (for refusals, whose change was rolled back)."""
        await run_db(ctx, lambda session: self(action, target, session=session, **kw))

    def now(self, ctx: AppContext, action: str, target: str = "", **kw: Any) -> None:
        """``separately`` for sync code (a dependency that is about to refuse the request)."""
        with unit_of_work(ctx.session_factory) as session:
            self(action, target, session=session, **kw)


def get_auditor(request: Request, user: OptionalUser) -> Auditor:
    via = "anonymous" if user is None else "token" if user.via_token else "console"
    return Auditor(actor=user.name if user else "", source=client_address(request), via=via)


AuditDep = Annotated[Auditor, Depends(get_auditor)]


def safe_values(body: BaseModel) -> dict[str, Any]:
    """The fields a request set, as JSON values, without secrets."""
    values = body.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return {k: v for k, v in values.items() if k not in SECRET_FIELDS}


# --- reading the trail ----------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    """The trail's filter, shared by the REST API, the page and the JSON lines export."""

    actor: Annotated[str | None, Query(max_length=128)] = None
    action: Annotated[str | None, Query(max_length=64)] = None
    target: Annotated[str | None, Query(max_length=255)] = None
    date_from: date | None = None
    date_to: date | None = None

    def query(self, *, limit: int = PAGE_LIMIT, offset: int = 0) -> audit.AuditQuery:
        since, until = day_range(self.date_from, self.date_to)
        return audit.AuditQuery(
            actor=self.actor or None,
            action=self.action or None,
            target=self.target or None,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )

    def params(self) -> dict[str, str]:
        return {
            "actor": self.actor or "",
            "action": self.action or "",
            "target": self.target or "",
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
        }


AuditFilterDep = Annotated[AuditFilter, Depends()]


def _export(ctx: AppContext, where: AuditFilter) -> StreamingResponse:
    def lines() -> Iterator[str]:
        # Its own session, held while the response streams: the trail may be long.
        with unit_of_work(ctx.session_factory) as session:
            yield from audit.json_lines(audit.iter_all(where.query(), session=session))

    return StreamingResponse(
        lines(),
        media_type=JSONL,
        headers={"Content-Disposition": 'attachment; filename="petray-audit.jsonl"'},
    )


@api.get("", response_model=list[AuditEventPublic])
def api_audit(
    session: SessionDep,
    _user: ApiAdmin,
    where: AuditFilterDep,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = PAGE_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AuditEventPublic]:
    entries = audit.query(where.query(limit=limit, offset=offset), session=session)
    return [AuditEventPublic(**e.__dict__) for e in entries]


@api.get("/export.jsonl", response_class=StreamingResponse)
def api_audit_export(ctx: ContextDep, _user: ApiAdmin, where: AuditFilterDep) -> StreamingResponse:
    return _export(ctx, where)


@pages.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: PageAdmin,
    where: AuditFilterDep,
    page: Annotated[int, Query(ge=1)] = 1,
) -> HTMLResponse:
    params = where.params()
    entries = audit.query(
        where.query(limit=PAGE_LIMIT + 1, offset=(page - 1) * PAGE_LIMIT), session=session
    )
    return render(
        request,
        ctx,
        "audit.html",
        user=user,
        entries=entries[:PAGE_LIMIT],
        more=len(entries) > PAGE_LIMIT,
        page=page,
        params=params,
        query=urlencode({k: v for k, v in params.items() if v}),
    )


@pages.get("/audit/export.jsonl", response_class=StreamingResponse)
def audit_page_export(
    ctx: ContextDep, _user: PageAdmin, where: AuditFilterDep
) -> StreamingResponse:
    return _export(ctx, where)
