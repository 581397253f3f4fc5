"""DICOM devices (sources and destinations) with a C-ECHO test (issue 5)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.db.models import Device
from petray.errors import ConfigurationError
from petray.scu import DicomNode, echo
from petray.siteconfig import add_device, effective_listener, list_devices
from serve.deps import (
    ApiAdmin,
    ApiOperator,
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageAdmin,
    PageOperator,
    PageViewer,
    Principal,
    SessionDep,
    run_db,
)
from serve.routes.common import flash, parse_form, redirect, render
from serve.schemas import DeviceCreate, DevicePublic, DeviceUpdate, EchoResultPublic

api = APIRouter(prefix="/api/v1/devices", tags=["devices"])
pages = APIRouter(include_in_schema=False)
ECHO_TIMEOUT_S = 5.0


def _get(device_id: int, session: Session) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such device")
    return device


def create(body: DeviceCreate, *, session: Session) -> Device:
    return add_device(session=session, **body.model_dump())


def update(device: Device, body: DeviceUpdate, *, session: Session) -> Device:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    name = changes.get("name")
    if name and name != device.name:
        clash = session.scalar(select(Device.id).where(Device.name == name))
        if clash is not None:
            raise ConfigurationError(f"a device named {name!r} already exists")
    for key, value in changes.items():
        setattr(device, key, value)
    if not (device.is_source or device.is_destination):
        raise ConfigurationError("a device must be a source, a destination or both")
    session.flush()
    return device


async def echo_device(ctx: AppContext, device_id: int) -> EchoResultPublic:
    def load(session: Session) -> tuple[DicomNode, str]:
        device = _get(device_id, session)
        listener = effective_listener(ctx.settings, session=session)
        return DicomNode(device.ae_title, device.host, device.port), listener.ae_title

    node, calling_ae = await run_db(ctx, load)
    # pynetdicom blocks: run the association off the event loop.
    result = await run_in_threadpool(echo, node, calling_ae=calling_ae, timeout_s=ECHO_TIMEOUT_S)
    return EchoResultPublic(
        ok=result.ok,
        status=result.status,
        latency_ms=round(result.latency_s * 1000, 1) if result.ok else None,
        message=result.message,
    )


@api.get("", response_model=list[DevicePublic])
def api_list(session: SessionDep, _user: ApiViewer) -> list[Device]:
    return list_devices(session=session)


@api.post("", response_model=DevicePublic, status_code=status.HTTP_201_CREATED)
def api_create(body: DeviceCreate, session: SessionDep, _user: ApiAdmin) -> Device:
    try:
        return create(body, session=session)
    except ConfigurationError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@api.get("/{device_id}", response_model=DevicePublic)
def api_get(device_id: int, session: SessionDep, _user: ApiViewer) -> Device:
    return _get(device_id, session)


@api.patch("/{device_id}", response_model=DevicePublic)
def api_update(device_id: int, body: DeviceUpdate, session: SessionDep, _user: ApiAdmin) -> Device:
    try:
        return update(_get(device_id, session), body, session=session)
    except ConfigurationError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None


@api.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
def api_delete(device_id: int, session: SessionDep, _user: ApiAdmin) -> None:
    session.delete(_get(device_id, session))


@api.post("/{device_id}/echo", response_model=EchoResultPublic)
async def api_echo(device_id: int, ctx: ContextDep, _user: ApiOperator) -> EchoResultPublic:
    return await echo_device(ctx, device_id)


# --- pages ---------------------------------------------------------------------------------


def _page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: Principal,
    *,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    echo_result: tuple[int, EchoResultPublic] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        ctx,
        "devices.html",
        user=user,
        devices=list_devices(session=session),
        errors=errors or {},
        values=values or {},
        echo_result=echo_result,
        status_code=status_code,
    )


@pages.get("/devices", response_class=HTMLResponse)
def devices_page(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    return _page(request, ctx, session, user)


@pages.post("/devices", response_model=None)
def devices_create(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageAdmin, form: FormDep
) -> HTMLResponse | RedirectResponse:
    body, errors = parse_form(DeviceCreate, form)
    if body is not None:
        try:
            device = create(body, session=session)
        except ConfigurationError as exc:
            errors = {"name": str(exc)}
        else:
            flash(request, f"Device {device.name} added.")
            return redirect("/devices")
    return _page(request, ctx, session, user, errors=errors, values=form, status_code=422)


@pages.post("/devices/{device_id}/delete")
def devices_delete(
    request: Request, device_id: int, session: SessionDep, _user: PageAdmin, _form: FormDep
) -> RedirectResponse:
    device = _get(device_id, session)
    session.delete(device)
    flash(request, f"Device {device.name} removed.")
    return redirect("/devices")


@pages.post("/devices/{device_id}/echo", response_class=HTMLResponse)
async def devices_echo(
    request: Request, device_id: int, ctx: ContextDep, user: PageOperator, _form: FormDep
) -> HTMLResponse:
    result = await echo_device(ctx, device_id)

    def show(session: Session) -> HTMLResponse:
        return _page(request, ctx, session, user, echo_result=(device_id, result))

    return await run_db(ctx, show)
