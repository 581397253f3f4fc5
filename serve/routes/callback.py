"""``POST /process_ready``: the remote service says a result is waiting (REMOTE_PROTOCOL.md).

The handler only records the transition and tells the pipeline; the Downloader does the work.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session

from petray.errors import InvalidTransition, UnknownTask
from petray.site import audit
from petray.site.production import is_development_secret
from petray.site.schemas import Acknowledge, Message, ProcessReady
from petray.tasks import accept_result_callback
from serve.deps import ContextDep, run_db
from serve.routes.audit import Auditor, client_address
from serve.security import bearer_token, tokens_equal

log = logging.getLogger(__name__)

router = APIRouter(tags=["callback"])


def require_callback_token(
    ctx: ContextDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    # A dependency runs before the body is validated, so a caller without the token learns
    # nothing (not even whether its body was well-formed) and changes nothing.
    token = bearer_token(authorization)
    expected = ctx.settings.callback_token
    # Issue 9: production never accepts a development token, even one that slipped past start.
    refused = ctx.settings.production and is_development_secret(expected)
    if token is None or refused or not tokens_equal(token, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or missing callback token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _service(request: Request) -> Auditor:
    return Auditor(actor=audit.SERVICE, source=client_address(request), via="callback")


def audited_callback_token(
    request: Request, ctx: ContextDep, authorization: Annotated[str | None, Header()] = None
) -> None:
    """``require_callback_token``, with every refusal in the audit trail (issue 10)."""
    try:
        require_callback_token(ctx, authorization)
    except HTTPException:
        _service(request).now(ctx, "callback", outcome="unauthorized", actor="")
        raise


@router.post(
    "/process_ready",
    response_model=Acknowledge,
    dependencies=[Depends(audited_callback_token)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ProcessReady.model_json_schema()}},
        }
    },
    responses={
        401: {"model": Message},
        404: {"model": Message},
        409: {"model": Message},
    },
)
async def process_ready(request: Request, ctx: ContextDep) -> Acknowledge:
    # The body is parsed here, after the token check: with a body parameter FastAPI would read
    # and reject malformed JSON before any dependency runs, answering 422 to a caller with no
    # token, where REMOTE_PROTOCOL.md says every unauthenticated request gets 401.
    try:
        body = ProcessReady.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    task_id = body.task_id
    service = _service(request)
    target = f"task {task_id}"

    def accept(session: Session) -> bool:
        start = accept_result_callback(task_id, session=session)
        service("callback", target, session=session, outcome="accepted" if start else "repeat")
        return start

    try:
        # Committed before the pipeline hears of it: a crash in between is healed by the
        # restart scan (the task is in stage downloading), never by a second callback.
        start = await run_db(ctx, accept)
    except UnknownTask:
        await service.separately(ctx, "callback", target, outcome="unknown task")
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown task") from None
    except InvalidTransition:
        await service.separately(ctx, "callback", target, outcome="not waiting")
        raise HTTPException(status.HTTP_409_CONFLICT, "task is not waiting for a result") from None
    if start:
        log.info("result ready for task %s; starting download", task_id)
        await ctx.pipeline.result_ready(task_id)
    else:
        log.info("repeated result callback for task %s ignored", task_id)
    return Acknowledge()
