"""DICOM devices (sources and destinations) with a C-ECHO test (issue 5)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.db.models import Device
from petray.scu import DicomNode, echo
from petray.siteconfig import add_device, effective_listener, list_devices
from petray.tls import device_tls
from petray.users import Role
from serve.deps import ApiOperator, AppContext, ContextDep, FormDep, PageOperator, run_db
from serve.routes.audit import AuditDep, Auditor
from serve.routes.crud import FieldConflict, Resource, api_router, page_router
from serve.schemas import DeviceCreate, DevicePublic, DeviceUpdate, EchoResultPublic

ECHO_TIMEOUT_S = 5.0
ROLE_FLAGS = ("is_source", "is_destination", "tls", "match_ae_only")


def create(body: DeviceCreate, *, session: Session) -> Device:
    return add_device(session=session, **body.model_dump())


def update(device: Device, body: DeviceUpdate, *, session: Session) -> Device:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    name = changes.get("name")
    if name and name != device.name:
        clash = session.scalar(select(Device.id).where(Device.name == name))
        if clash is not None:
            raise FieldConflict("name", f"a device named {name!r} already exists")
    for key, value in changes.items():
        setattr(device, key, value.strip() if key.startswith("tls_") else value)
    if not (device.is_source or device.is_destination):
        raise FieldConflict("__all__", "a device must be a source, a destination or both")
    if bool(device.tls_cert) != bool(device.tls_key):
        raise FieldConflict("tls_key", "a TLS client certificate needs its key, and a key its cert")
    session.flush()
    return device


def _form_data(form: Mapping[str, str]) -> dict[str, object]:
    # Unchecked boxes are absent from a posted form: absent means "no", also when editing.
    return {**dict.fromkeys(ROLE_FLAGS, "false"), **form}


DEVICES: Resource[Device] = Resource(
    model=Device,
    noun="device",
    path="/devices",
    template="devices.html",
    rows_name="devices",
    list_rows=list_devices,
    create=create,
    update=update,
    create_schema=DeviceCreate,
    update_schema=DeviceUpdate,
    public_schema=DevicePublic,
    write_role=Role.ADMIN,
    label=lambda device: f"Device {device.name}",
    form_data=_form_data,
    editable=True,
)
api = api_router(DEVICES)
pages = page_router(DEVICES)


async def echo_device(ctx: AppContext, device_id: int, audit: Auditor) -> EchoResultPublic:
    def load(session: Session) -> tuple[DicomNode, str]:
        device = DEVICES.get(device_id, session)
        listener = effective_listener(ctx.settings, session=session)
        node = DicomNode(device.ae_title, device.host, device.port, tls=device_tls(device))
        return node, listener.ae_title

    node, calling_ae = await run_db(ctx, load)
    # pynetdicom blocks: run the association off the event loop.
    result = await run_in_threadpool(echo, node, calling_ae=calling_ae, timeout_s=ECHO_TIMEOUT_S)
    # An association out, asked for by a person: the trail keeps both.
    await audit.separately(
        ctx,
        "device.echo",
        f"{node.ae_title}@{node.host}:{node.port}",
        outcome="ok" if result.ok else "failed",
        id=device_id,
        calling_ae=calling_ae,
        message=result.message,
    )
    return EchoResultPublic(
        ok=result.ok,
        status=result.status,
        latency_ms=round(result.latency_s * 1000, 1) if result.ok else None,
        message=result.message,
    )


@api.post("/{device_id}/echo", response_model=EchoResultPublic)
async def api_echo(
    device_id: int, ctx: ContextDep, _user: ApiOperator, audit: AuditDep
) -> EchoResultPublic:
    return await echo_device(ctx, device_id, audit)


@pages.post("/devices/{device_id}/echo", response_class=HTMLResponse)
async def devices_echo(
    request: Request,
    device_id: int,
    ctx: ContextDep,
    user: PageOperator,
    _form: FormDep,
    audit: AuditDep,
) -> HTMLResponse:
    result = await echo_device(ctx, device_id, audit)

    def show(session: Session) -> HTMLResponse:
        return DEVICES.page(request, ctx, session, user, echo_result=(device_id, result))

    return await run_db(ctx, show)
