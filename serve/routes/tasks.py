"""Tasks: list, detail, MIP previews and the retry/restart/cancel/delete actions (issue 5).

Release and reject (issue 15) decide on a task held by the quantitative check
(petray.stages.review).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BeforeValidator
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.db.models import OutputSeries, Task
from petray.domain import Stage, State
from petray.errors import InvalidTransition, UnknownTask
from petray.imaging import mip
from petray.site.activity import MAX_PAGE_SIZE, TaskQuery, TaskRow, query_tasks, remove_files
from petray.site.schemas import (
    BulkOutcome,
    BulkResult,
    BulkTaskAction,
    DestinationProgress,
    OutputSeriesPublic,
    TaskAction,
    TaskDetail,
    TaskEventPublic,
    TaskList,
    TaskPublic,
    TaskReject,
)
from petray.stages.records import Quant
from petray.stages.review import reject, release
from petray.task_files import TaskFiles
from petray.tasks import cancel, delete_task, get_task, instance_paths, retry
from serve.deps import (
    ApiOperator,
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageOperator,
    PageViewer,
    Principal,
    SessionDep,
    run_db,
)
from serve.routes.audit import AuditDep, Auditor
from serve.routes.common import day_range, flash, redirect, render
from serve.routes.crud import MAX_ROW_ID

log = logging.getLogger(__name__)

api = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
pages = APIRouter(include_in_schema=False)

Action = Literal["retry", "restart", "cancel", "delete", "release", "reject"]
BulkAction = Literal["retry", "cancel", "delete"]
BULK_PAST = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
ACTIONS: tuple[Action, ...] = ("retry", "restart", "cancel", "delete", "release", "reject")
# Actions after which the pipeline takes the task up again at once (not at its next sweep).
RESUMING = frozenset({"retry", "restart", "release"})
SortParam = Literal["created", "updated", "stage", "state", "sender", "images"]
HIDDEN = "(hidden)"
MAX_PAGE = 1_000_000


def _blank_is_none(value: object) -> object:
    # The page's filter form sends "any" as an empty value (state=&stage=&date_from=).
    return None if value == "" else value


E = TypeVar("E")
Blankable = Annotated[E | None, BeforeValidator(_blank_is_none)]


@dataclass(frozen=True)
class TaskFilter:
    """The task list's query parameters, shared by the REST API and the Tasks page."""

    state: Blankable[State] = None
    stage: Blankable[Stage] = None
    sender: Annotated[str | None, Query(max_length=64)] = None
    patient_id: Annotated[str | None, Query(max_length=64)] = None
    accession: Annotated[str | None, Query(max_length=16)] = None
    date_from: Blankable[date] = None
    date_to: Blankable[date] = None
    sort: SortParam = "created"
    order: Literal["asc", "desc"] = "desc"
    # Bounded so that page x page_size stays a 64-bit offset (issue 9: API fuzz, 500 on
    # page=9223372036854775239); nobody pages through a million pages of tasks.
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50

    def query(self) -> TaskQuery:
        since, until = day_range(self.date_from, self.date_to)
        return TaskQuery(
            state=self.state.value if self.state else None,
            stage=self.stage.value if self.stage else None,
            sender=self.sender or None,
            patient_id=self.patient_id or None,
            accession=self.accession or None,
            since=since,
            until=until,
            sort=self.sort,
            descending=self.order == "desc",
            page=self.page,
            page_size=self.page_size,
        )

    def params(self) -> dict[str, str]:
        """The filter as the page's form and pagination links carry it (page excluded)."""
        return {
            "state": self.state.value if self.state else "",
            "stage": self.stage.value if self.stage else "",
            "sender": self.sender or "",
            "patient_id": self.patient_id or "",
            "accession": self.accession or "",
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
            "sort": self.sort,
            "order": self.order,
            "page_size": str(self.page_size),
        }


TaskFilterDep = Annotated[TaskFilter, Depends()]


def _common(task: TaskRow | Task) -> dict[str, Any]:
    """The fields a listing row and a task share (both spell the sender ``calling_ae``)."""
    return {
        "id": task.id,
        "stage": task.stage,
        "state": task.state,
        "images": task.images,
        "expected_images": task.expected_images,
        "sender": task.calling_ae,
        "peer_host": task.peer_host,
        "reason": task.reason,
        "created": task.created,
        "updated": task.updated,
    }


def _public(row: TaskRow, user: Principal) -> TaskPublic:
    sees = user.sees_patient_data
    return TaskPublic(
        **_common(row),
        series_description=row.series_description,
        patient_name=row.patient_name if sees else None,
        patient_id=row.patient_id if sees else None,
        accession_number=row.accession_number if sees else None,
        study_date=row.study_date,
    )


def _detail(task: Task, user: Principal) -> TaskDetail:
    series = task.series
    study, sees = series.study, user.sees_patient_data
    return TaskDetail(
        **_common(task),
        series_description=series.description,
        patient_name=study.patient.name if sees else None,
        patient_id=study.patient.patient_id if sees else None,
        accession_number=study.accession_number if sees else None,
        study_date=study.study_date,
        attempts=task.attempts,
        retry_attempts=task.retry_attempts,
        last_error=task.last_error,
        next_attempt_at=task.next_attempt_at,
        notes=[line for line in task.notes.splitlines() if line],
        radiopharmaceutical=task.radiopharmaceutical,
        files_purged_at=task.files_purged_at,
        quant=quant.public() if (quant := Quant.find(task.details)) else None,
        events=[
            TaskEventPublic(stage=e.stage, state=e.state, message=e.message, at=e.at)
            for e in task.events
        ],
        destinations=[
            DestinationProgress(
                name=d.name,
                ae_title=d.ae_title,
                host=d.host,
                port=d.port,
                state=d.state,
                sent=d.sent,
                total=d.total,
                reason=d.reason,
            )
            for d in task.destinations
        ],
        outputs=[
            OutputSeriesPublic(
                id=o.id,
                series_instance_uid=o.series_instance_uid,
                series_number=o.series_number,
                description=o.description,
                instances=o.instances,
            )
            for o in task.outputs
        ],
    )


async def perform(
    ctx: AppContext, task_id: str, action: Action, audit: Auditor, *, note: str = ""
) -> TaskAction | None:
    """Apply an action; commits (with its audit event) before the pipeline is told.

    ``note`` is the operator's reason for a reject, added to the task's failure reason.
    """
    target = f"task {task_id}"
    if action == "delete":
        files = TaskFiles.of(ctx.settings, task_id) if task_id.isalnum() else None

        def forget(session: Session) -> list[Path]:
            paths = delete_task(task_id, session=session, files=files)
            audit("task.delete", target, session=session)
            return paths

        paths = await run_db(ctx, forget)
        removed = await run_in_threadpool(remove_files, paths)
        log.info("task %s deleted with its files (%d files)", task_id, removed.files)
        return None

    def change(session: Session) -> TaskAction:
        before = get_task(task_id, session=session)
        was = f"{before.stage}/{before.state}"
        if action == "cancel":
            cancel(task_id, session=session)
        elif action == "release":
            release(task_id, session=session, by=audit.actor)
        elif action == "reject":
            reject(task_id, session=session, by=audit.actor, note=note)
        else:
            retry(task_id, session=session, from_start=action == "restart")
        task = get_task(task_id, session=session)
        audit(
            f"task.{action}",
            target,
            session=session,
            before=was,
            after=f"{task.stage}/{task.state}",
            **({"reason": task.reason} if action == "reject" else {}),
        )
        return TaskAction(id=task.id, stage=task.stage, state=task.state)

    result = await run_db(ctx, change)
    if action in RESUMING:
        await ctx.pipeline.resume(task_id)
    log.info("task %s: %s by console/API", task_id, action)
    return result


# --- REST API ------------------------------------------------------------------------------


@api.get("", response_model=TaskList)
def api_list_tasks(session: SessionDep, user: ApiViewer, task_filter: TaskFilterDep) -> TaskList:
    result = query_tasks(task_filter.query(), session=session)
    return TaskList(
        items=[_public(r, user) for r in result.rows],
        total=result.total,
        page=result.page,
        page_size=result.page_size,
    )


@api.get("/{task_id}", response_model=TaskDetail)
def api_get_task(task_id: str, session: SessionDep, user: ApiViewer) -> TaskDetail:
    # UnknownTask and InvalidTransition become 404 and 409 in serve.app's exception handlers.
    return _detail(get_task(task_id, session=session), user)


def _action_route(action: Action) -> None:
    async def endpoint(
        task_id: str, ctx: ContextDep, _user: ApiOperator, audit: AuditDep
    ) -> TaskAction | None:
        return await perform(ctx, task_id, action, audit)

    api.add_api_route(
        f"/{{task_id}}/{action}",
        endpoint,
        methods=["POST"],
        response_model=TaskAction,
        name=f"api_{action}",
        summary=f"{action.capitalize()} a task",
    )


for _action in ACTIONS:
    # DELETE /api/v1/tasks/{id} is below, answered with 204; reject takes a body.
    if _action not in ("delete", "reject"):
        _action_route(_action)


@api.post(
    "/{task_id}/reject",
    response_model=TaskAction,
    name="api_reject",
    summary="Reject a task held for quantitative review (it fails; nothing is sent)",
)
async def api_reject(
    task_id: str,
    ctx: ContextDep,
    _user: ApiOperator,
    audit: AuditDep,
    body: TaskReject | None = None,
) -> TaskAction | None:
    return await perform(ctx, task_id, "reject", audit, note=body.reason if body else "")


async def perform_bulk(
    ctx: AppContext, action: BulkAction, ids: list[str], audit: Auditor
) -> BulkResult:
    """``action`` on each task in turn, each in its own transaction with its own audit event.

    A task that cannot take the action (a done task retried, one deleted meanwhile) is
    skipped with the reason; the others go ahead.
    """
    outcomes: list[BulkOutcome] = []
    for task_id in dict.fromkeys(ids):  # once each, in the order given
        try:
            result = await perform(ctx, task_id, action, audit)
        except (UnknownTask, InvalidTransition) as exc:
            outcomes.append(BulkOutcome(id=task_id, ok=False, detail=str(exc)))
            continue
        after = "deleted" if result is None else f"{result.stage}/{result.state}"
        outcomes.append(BulkOutcome(id=task_id, ok=True, detail=after))
    done = sum(o.ok for o in outcomes)
    return BulkResult(action=action, done=done, skipped=len(outcomes) - done, outcomes=outcomes)


@api.post("/bulk", response_model=BulkResult, summary="Retry, cancel or delete many tasks")
async def api_bulk(
    body: BulkTaskAction, ctx: ContextDep, _user: ApiOperator, audit: AuditDep
) -> BulkResult:
    return await perform_bulk(ctx, body.action, body.ids, audit)


@api.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT)
async def api_delete(task_id: str, ctx: ContextDep, _user: ApiOperator, audit: AuditDep) -> None:
    await perform(ctx, task_id, "delete", audit)


# --- pages ---------------------------------------------------------------------------------


@pages.get("/tasks", response_class=HTMLResponse)
def tasks_page(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: PageViewer,
    task_filter: TaskFilterDep,
) -> HTMLResponse:
    return render(
        request,
        ctx,
        "tasks.html",
        user=user,
        result=query_tasks(task_filter.query(), session=session),
        params=task_filter.params(),
        states=[s.value for s in State],
        stages=[s.value for s in Stage],
    )


def _timeline(task: TaskDetail) -> list[dict[str, object]]:
    """One row per stage visit: when it started and when the next event ended it."""
    rows: list[dict[str, object]] = []
    for i, event in enumerate(task.events):
        ended = task.events[i + 1].at if i + 1 < len(task.events) else None
        seconds = (ended - event.at).total_seconds() if ended else None
        rows.append({"event": event, "ended": ended, "seconds": seconds})
    return rows


@pages.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(
    request: Request, task_id: str, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    try:
        task = _detail(get_task(task_id, session=session), user)
    except UnknownTask:
        return render(
            request, ctx, "error.html", user=user, status_code=404, message="No such task."
        )
    return render(
        request,
        ctx,
        "task.html",
        user=user,
        task=task,
        timeline=_timeline(task),
        final=task.state in (State.DONE, State.FAILED, State.CANCELLED),
    )


@pages.post("/tasks/bulk")
async def tasks_bulk(
    request: Request,
    ctx: ContextDep,
    _user: PageOperator,
    form: FormDep,
    audit: AuditDep,
) -> RedirectResponse:
    # Back to the list as the user left it (filters, page), which the form carries along.
    back = "/tasks" + (f"?{form['back']}" if form.get("back", "").strip() else "")
    action = form.get("action", "")
    ids = [str(i) for i in (await request.form()).getlist("ids") if isinstance(i, str)]
    if action not in BULK_PAST or not ids:
        flash(request, "Select tasks and an action first.", kind="error")
        return redirect(back)
    result = await perform_bulk(ctx, cast(BulkAction, action), ids, audit)
    message = f"{result.done} task{'s' if result.done != 1 else ''} {BULK_PAST[action]}."
    if result.skipped:
        reasons = "; ".join(o.detail for o in result.outcomes if not o.ok)
        message += f" {result.skipped} skipped: {reasons}"
    flash(request, message, kind="warn" if result.skipped else "ok")
    return redirect(back)


@pages.post("/tasks/{task_id}/{action}")
async def task_action(
    request: Request,
    task_id: str,
    action: Action,
    ctx: ContextDep,
    _user: PageOperator,
    form: FormDep,
    audit: AuditDep,
) -> RedirectResponse:
    try:
        await perform(ctx, task_id, action, audit, note=form.get("reason", "")[:200])
    except UnknownTask:
        flash(request, "No such task.", kind="error")
        return redirect("/tasks")
    except InvalidTransition as exc:
        flash(request, str(exc), kind="error")
        return redirect(f"/tasks/{task_id}")
    if action == "delete":
        flash(request, f"Task {task_id} and its files were deleted.")
        return redirect("/tasks")
    flash(request, f"Task {task_id}: {action} done.")
    return redirect(f"/tasks/{task_id}")


# --- MIP previews --------------------------------------------------------------------------

PNG = "image/png"


def _mip_response(cache: Path, files: Iterable[str | Path]) -> Response:
    """The MIP of ``files`` as PNG, rendered once and then served from ``cache``."""
    if cache.is_file():
        data = cache.read_bytes()
    else:
        data = mip.render_mip_png(mip.load_volume(files))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(cache)
    return Response(data, media_type=PNG, headers={"Cache-Control": "private, max-age=60"})


@pages.get("/tasks/{task_id}/mip/source.png")
def mip_source(task_id: str, ctx: ContextDep, session: SessionDep, _user: PageViewer) -> Response:
    paths = instance_paths(task_id, session=session)
    existing = [p for p in paths if Path(p).is_file()]
    if not existing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no source images")
    # Keyed by the instance count: a task still compiling gets a fresh preview as slices arrive.
    cache = TaskFiles.of(ctx.settings, task_id).previews / f"source-{len(existing)}.png"
    return _mip_response(cache, existing)


@pages.get("/tasks/{task_id}/mip/output/{output_id}.png")
def mip_output(
    task_id: str, output_id: int, ctx: ContextDep, session: SessionDep, _user: PageViewer
) -> Response:
    output = session.get(OutputSeries, output_id) if 1 <= output_id <= MAX_ROW_ID else None
    if output is None or output.task_id != task_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such output series")
    files = mip.series_files(output.directory)
    if not files:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "output files are gone")
    # A retried task gets new series UIDs, so the UID keys the cache.
    cache = TaskFiles.of(ctx.settings, task_id).previews / f"{output.series_instance_uid}.png"
    return _mip_response(cache, files)
