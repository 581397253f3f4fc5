"""The admin log page: petray's own log file, filtered by level and text (issue 11).

Reads PETRAY_HOME/logs/petray.log, which every actor, the Serve replica and ``petray start``
write (``petray.logfile``); the download gives the last N lines as plain text.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from petray.logfile import LEVELS, MAX_TAIL_LINES, last_lines, log_path
from serve.deps import ApiAdmin, ContextDep, PageAdmin
from serve.routes.common import render

api = APIRouter(prefix="/api/v1/logs", tags=["logs"])
pages = APIRouter(include_in_schema=False)

Level = Literal["", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LevelParam = Annotated[Level, Query(description="this level and above")]
TextParam = Annotated[str, Query(max_length=200, description="lines containing this text")]
LinesParam = Annotated[int, Query(ge=1, le=MAX_TAIL_LINES)]
PAGE_LINES = 500


class LogLinePublic(BaseModel):
    level: str
    text: str


class LogTail(BaseModel):
    path: str
    lines: list[LogLinePublic]


@api.get("", response_model=LogTail)
async def api_logs(
    ctx: ContextDep,
    _user: ApiAdmin,
    level: LevelParam = "",
    q: TextParam = "",
    lines: LinesParam = PAGE_LINES,
) -> LogTail:
    path = log_path(ctx.settings.home)
    found = await run_in_threadpool(last_lines, path, lines, level=level, text=q)
    return LogTail(path=str(path), lines=[LogLinePublic(level=x.level, text=x.text) for x in found])


@pages.get("/logs", response_class=HTMLResponse)
async def logs_page(
    request: Request,
    ctx: ContextDep,
    user: PageAdmin,
    level: LevelParam = "",
    q: TextParam = "",
    lines: LinesParam = PAGE_LINES,
) -> HTMLResponse:
    path = log_path(ctx.settings.home)
    found = await run_in_threadpool(last_lines, path, lines, level=level, text=q)
    return render(
        request,
        ctx,
        "logs.html",
        user=user,
        lines=list(reversed(found)),  # newest first, as the other pages list things
        levels=LEVELS,
        level=level,
        q=q,
        count=lines,
        log_file=str(path),
        exists=path.is_file(),
    )


@pages.get("/logs/download")
async def logs_download(
    ctx: ContextDep,
    _user: PageAdmin,
    level: LevelParam = "",
    q: TextParam = "",
    lines: LinesParam = 1000,
) -> PlainTextResponse:
    found = await run_in_threadpool(
        last_lines, log_path(ctx.settings.home), lines, level=level, text=q
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return PlainTextResponse(
        "".join(line.text + "\n" for line in found),
        headers={"Content-Disposition": f'attachment; filename="petray-{stamp}.log"'},
    )
