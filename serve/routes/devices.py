"""DICOM devices (sources and destinations) with a C-ECHO test (issue 5)."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import HTTPException, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.db.models import Device
from petray.dicom.scu import DicomNode, echo
from petray.dicom.stow_device import auth_label
from petray.dicom.tls import device_tls
from petray.site.schemas import DeviceCreate, DevicePublic, DeviceUpdate, EchoResultPublic
from petray.site.siteconfig import (
    add_device,
    add_stow_device,
    effective_listener,
    list_devices,
    set_stow,
)
from petray.site.users import Role
from serve.deps import ApiOperator, AppContext, ContextDep, FormDep, PageOperator, run_db
from serve.routes.audit import AuditDep, Auditor
from serve.routes.crud import FieldConflict, Resource, api_router, page_router

ECHO_TIMEOUT_S = 5.0
ROLE_FLAGS = ("is_source", "is_destination", "tls", "match_ae_only")


STOW_FIELDS = ("stow_url", "stow_token", "stow_basic")
DIMSE_ADDRESS = ("ae_title", "host", "port")


def create(body: DeviceCreate, *, session: Session) -> Device:
    if body.stow_url is not None:
        return add_stow_device(
            session=session,
            name=body.name,
            url=body.stow_url,
            token=body.stow_token,
            basic=body.stow_basic,
            tls_ca=body.tls_ca,
            tls_cert=body.tls_cert,
            tls_key=body.tls_key,
        )
    values = body.model_dump(exclude=set(STOW_FIELDS))
    return add_device(session=session, **values)


def _update_stow(device: Device, changes: dict[str, object], stow: dict[str, str]) -> None:
    """Issue 15: a STOW-RS device's URL and credentials, or its way back to DICOM."""
    if stow.get("stow_url") == "" and device.stow_url:
        missing = [key for key in DIMSE_ADDRESS if key not in changes]
        if missing:
            raise FieldConflict("stow_url", "a DICOM device needs its AE title, host and port")
        device.stow_url = device.stow_token = device.stow_basic = ""
        device.tls = False
        return
    url = stow.get("stow_url") or device.stow_url
    if not url:
        if stow.get("stow_token") or stow.get("stow_basic"):
            raise FieldConflict("stow_url", "credentials are for a STOW-RS device: give its URL")
        return
    given = [key for key in DIMSE_ADDRESS if key in changes]
    if given:
        raise FieldConflict("stow_url", f"a STOW-RS device has no {', '.join(given)}")
    if changes.get("is_source"):
        raise FieldConflict("is_source", "a STOW-RS device is a destination only")
    token, basic = device.stow_token, device.stow_basic
    if "stow_token" in stow or "stow_basic" in stow:
        # New credentials replace the old ones, whichever kind they were.
        token, basic = stow.get("stow_token", ""), stow.get("stow_basic", "")
    set_stow(device, url=url, token=token, basic=basic)


def update(device: Device, body: DeviceUpdate, *, session: Session) -> Device:
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    stow = {key: changes.pop(key) for key in STOW_FIELDS if key in changes}
    name = changes.get("name")
    if name and name != device.name:
        clash = session.scalar(select(Device.id).where(Device.name == name))
        if clash is not None:
            raise FieldConflict("name", f"a device named {name!r} already exists")
    _update_stow(device, changes, stow)
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
    data: dict[str, object] = {**dict.fromkeys(ROLE_FLAGS, "false"), **form}
    if str(form.get("stow_url", "")).strip():
        # A STOW-RS device: its TLS follows the URL and it only receives (issue 15).
        for flag in ("tls", "is_source", "match_ae_only"):
            if data[flag] == "false":
                del data[flag]
        data["is_destination"] = "true"
    return data


def _edit_values(device: Device, values: dict[str, str]) -> dict[str, str]:
    """The edit form never shows a secret; empty secret fields leave the credentials as they are."""
    values = {**values, "stow_token": "", "stow_basic": ""}
    if device.stow_url:
        values.update(ae_title="", host="", port="")
    return values


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
    edit_values=_edit_values,
    # The console names the kind of credentials of a STOW-RS device, never the secret.
    page_context=lambda: {"stow_auth": lambda d: auth_label(d.stow_token, d.stow_basic)},
    editable=True,
)
api = api_router(DEVICES)
pages = page_router(DEVICES)


async def echo_device(ctx: AppContext, device_id: int, audit: Auditor) -> EchoResultPublic:
    def load(session: Session) -> tuple[DicomNode, str]:
        device = DEVICES.get(device_id, session)
        if device.stow_url:
            raise HTTPException(
                status.HTTP_409_CONFLICT, "a STOW-RS destination has no C-ECHO (DICOM only)"
            )
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
