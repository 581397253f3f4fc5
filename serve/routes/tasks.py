"""Tasks: list, detail, MIP previews and the retry/restart/cancel/delete actions (issue 5)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray import mip
from petray.activity import TaskQuery, TaskRow, query_tasks, remove_files
from petray.db.models import OutputSeries, Task
from petray.domain import Stage, State
from petray.errors import InvalidTransition, UnknownTask
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
from serve.routes.common import flash, redirect, render
from serve.schemas import (
    DestinationProgress,
    OutputSeriesPublic,
    TaskAction,
    TaskDetail,
    TaskEventPublic,
    TaskList,
    TaskPublic,
)

log = logging.getLogger(__name__)

api = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])
pages = APIRouter(include_in_schema=False)

Action = Literal["retry", "restart", "cancel", "delete"]
ACTIONS: tuple[Action, ...] = ("retry", "restart", "cancel", "delete")
SortParam = Literal["created", "updated", "stage", "state", "sender", "images"]
HIDDEN = "(hidden)"


def _as_utc_start(day: date | None) -> datetime | None:
    return None if day is None else datetime.combine(day, time.min, tzinfo=UTC)


def build_query(
    *,
    state: State | None,
    stage: Stage | None,
    sender: str | None,
    date_from: date | None,
    date_to: date | None,
    sort: SortParam,
    order: Literal["asc", "desc"],
    page: int,
    page_size: int,
) -> TaskQuery:
    until = _as_utc_start(date_to + timedelta(days=1)) if date_to else None
    return TaskQuery(
        state=state.value if state else None,
        stage=stage.value if stage else None,
        sender=sender or None,
        since=_as_utc_start(date_from),
        until=until,
        sort=sort,
        descending=order == "desc",
        page=page,
        page_size=page_size,
    )


def _public(row: TaskRow, user: Principal) -> TaskPublic:
    return TaskPublic(
        id=row.id,
        stage=row.stage,
        state=row.state,
        images=row.images,
        expected_images=row.expected_images,
        sender=row.calling_ae,
        peer_host=row.peer_host,
        reason=row.reason,
        created=row.created,
        updated=row.updated,
        series_description=row.series_description,
        patient_name=row.patient_name if user.sees_patient_data else None,
    )


def _detail(task: Task, user: Principal) -> TaskDetail:
    series = task.series
    return TaskDetail(
        id=task.id,
        stage=task.stage,
        state=task.state,
        images=task.images,
        expected_images=task.expected_images,
        sender=task.calling_ae,
        peer_host=task.peer_host,
        reason=task.reason,
        created=task.created,
        updated=task.updated,
        series_description=series.description,
        patient_name=series.study.patient.name if user.sees_patient_data else None,
        attempts=task.attempts,
        radiopharmaceutical=task.radiopharmaceutical,
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


def _task_files(ctx: AppContext, task_id: str) -> list[Path]:
    """Working files petray keeps per task besides instances and outputs (best effort)."""
    settings = ctx.settings
    return [
        settings.work_dir / task_id,
        settings.work_dir / f"{task_id}.zip",
        settings.output_dir / task_id,
        settings.resolved_shared_dir / "to_process" / f"{task_id}.zip",
        settings.work_dir / "mip" / task_id,
    ]


async def perform(ctx: AppContext, task_id: str, action: Action) -> TaskAction | None:
    """Apply an action; commits before the pipeline is told (the database leads)."""
    if action == "delete":
        paths = await run_db(ctx, lambda s: delete_task(task_id, session=s))
        await run_in_threadpool(remove_files, paths, extra_dirs=_task_files(ctx, task_id))
        log.info("task %s deleted with its files", task_id)
        return None

    def change(session: Session) -> TaskAction:
        if action == "cancel":
            cancel(task_id, session=session)
        else:
            retry(task_id, session=session, from_start=action == "restart")
        task = get_task(task_id, session=session)
        return TaskAction(id=task.id, stage=task.stage, state=task.state)

    result = await run_db(ctx, change)
    if action in ("retry", "restart"):
        await ctx.pipeline.resume(task_id)
    log.info("task %s: %s by console/API", task_id, action)
    return result


# --- REST API ------------------------------------------------------------------------------


@api.get("", response_model=TaskList)
def api_list_tasks(
    session: SessionDep,
    user: ApiViewer,
    state: State | None = None,
    stage: Stage | None = None,
    sender: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    sort: SortParam = "created",
    order: Literal["asc", "desc"] = "desc",
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> TaskList:
    query = build_query(
        state=state,
        stage=stage,
        sender=sender,
        date_from=date_from,
        date_to=date_to,
        sort=sort,
        order=order,
        page=page,
        page_size=page_size,
    )
    result = query_tasks(query, session=session)
    return TaskList(
        items=[_public(r, user) for r in result.rows],
        total=result.total,
        page=result.page,
        page_size=result.page_size,
    )


@api.get("/{task_id}", response_model=TaskDetail)
def api_get_task(task_id: str, session: SessionDep, user: ApiViewer) -> TaskDetail:
    try:
        return _detail(get_task(task_id, session=session), user)
    except UnknownTask:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown task") from None


async def _api_action(ctx: AppContext, task_id: str, action: Action) -> TaskAction | None:
    try:
        return await perform(ctx, task_id, action)
    except UnknownTask:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "unknown task") from None
    except InvalidTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@api.post("/{task_id}/retry", response_model=TaskAction)
async def api_retry(task_id: str, ctx: ContextDep, _user: ApiOperator) -> TaskAction | None:
    return await _api_action(ctx, task_id, "retry")


@api.post("/{task_id}/restart", response_model=TaskAction)
async def api_restart(task_id: str, ctx: ContextDep, _user: ApiOperator) -> TaskAction | None:
    return await _api_action(ctx, task_id, "restart")


@api.post("/{task_id}/cancel", response_model=TaskAction)
async def api_cancel(task_id: str, ctx: ContextDep, _user: ApiOperator) -> TaskAction | None:
    return await _api_action(ctx, task_id, "cancel")


@api.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT)
async def api_delete(task_id: str, ctx: ContextDep, _user: ApiOperator) -> None:
    await _api_action(ctx, task_id, "delete")


# --- pages ---------------------------------------------------------------------------------


@pages.get("/tasks", response_class=HTMLResponse)
def tasks_page(
    request: Request,
    ctx: ContextDep,
    session: SessionDep,
    user: PageViewer,
    state: State | None = None,
    stage: Stage | None = None,
    sender: Annotated[str | None, Query(max_length=64)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    sort: SortParam = "created",
    order: Literal["asc", "desc"] = "desc",
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
) -> HTMLResponse:
    query = build_query(
        state=state,
        stage=stage,
        sender=sender,
        date_from=date_from,
        date_to=date_to,
        sort=sort,
        order=order,
        page=page,
        page_size=page_size,
    )
    result = query_tasks(query, session=session)
    params = {
        "state": state.value if state else "",
        "stage": stage.value if stage else "",
        "sender": sender or "",
        "date_from": date_from.isoformat() if date_from else "",
        "date_to": date_to.isoformat() if date_to else "",
        "sort": sort,
        "order": order,
        "page_size": str(page_size),
    }
    return render(
        request,
        ctx,
        "tasks.html",
        user=user,
        result=result,
        params=params,
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


@pages.post("/tasks/{task_id}/{action}")
async def task_action(
    request: Request,
    task_id: str,
    action: Action,
    ctx: ContextDep,
    _user: PageOperator,
    _form: FormDep,
) -> RedirectResponse:
    try:
        await perform(ctx, task_id, action)
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


def _cached_png(cache: Path, make: object) -> bytes:
    if cache.is_file():
        return cache.read_bytes()
    data: bytes = make()  # type: ignore[operator]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(cache)
    return data


@pages.get("/tasks/{task_id}/mip/source.png")
def mip_source(task_id: str, ctx: ContextDep, session: SessionDep, _user: PageViewer) -> Response:
    paths = instance_paths(task_id, session=session)
    existing = [p for p in paths if Path(p).is_file()]
    if not existing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no source images")
    # Keyed by the instance count: a task still compiling gets a fresh preview as slices arrive.
    cache = ctx.settings.work_dir / "mip" / task_id / f"source-{len(existing)}.png"
    data = _cached_png(cache, lambda: mip.render_mip_png(mip.load_volume(existing)))
    return Response(data, media_type=PNG, headers={"Cache-Control": "private, max-age=60"})


@pages.get("/tasks/{task_id}/mip/output/{output_id}.png")
def mip_output(
    task_id: str, output_id: int, ctx: ContextDep, session: SessionDep, _user: PageViewer
) -> Response:
    output = session.get(OutputSeries, output_id)
    if output is None or output.task_id != task_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such output series")
    files = mip.series_files(output.directory)
    if not files:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "output files are gone")
    # A retried task gets new series UIDs, so the UID keys the cache.
    cache = ctx.settings.work_dir / "mip" / task_id / f"{output.series_instance_uid}.png"
    data = _cached_png(cache, lambda: mip.render_mip_png(mip.load_volume(files)))
    return Response(data, media_type=PNG, headers={"Cache-Control": "private, max-age=60"})
