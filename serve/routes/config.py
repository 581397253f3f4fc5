"""Site configuration: local AE and port, compilator thresholds, remote service (issue 5)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from petray.errors import PetrayError
from petray.settings import Settings
from petray.site.schemas import (
    ConfigPublic,
    ConfigUpdate,
    ListenerUpdate,
    QuantUpdate,
    RemoteTestPublic,
    RemoteUpdate,
    RetentionUpdate,
    SiteUpdate,
    ThresholdsUpdate,
)
from petray.site.siteconfig import (
    NULLABLE_SETTINGS,
    apply_config_values,
    effective_client_id,
    effective_listener,
    effective_remote_url,
    everyone_refused,
    get_site_config,
)
from serve.deps import (
    ApiAdmin,
    ApiViewer,
    AppContext,
    ContextDep,
    FormDep,
    PageAdmin,
    PageViewer,
    Principal,
    SessionDep,
    run_db,
)
from serve.routes.audit import AuditDep, Auditor
from serve.routes.common import flash, parse_form, redirect, render

log = logging.getLogger(__name__)

api = APIRouter(prefix="/api/v1/config", tags=["config"])
pages = APIRouter(include_in_schema=False)
REMOTE_TEST_TIMEOUT_S = 5.0
LISTENER_FIELDS = frozenset({"ae_title", "dicom_port"})


def probe_remote(settings: Settings, url: str, timeout_s: float) -> RemoteTestPublic:
    """``GET /check_ping`` on the service; blocking, call it from a worker thread."""
    from petray.service.remote import RemoteClient

    try:
        with RemoteClient(
            url, settings.remote_token, timeout_s=min(timeout_s, settings.remote_timeout_s)
        ) as client:
            latency = client.ping()
    except PetrayError as exc:
        return RemoteTestPublic(ok=False, url=url, latency_ms=None, message=str(exc))
    return RemoteTestPublic(ok=True, url=url, latency_ms=round(latency * 1000, 1), message="OK")


def read_config(settings: Settings, *, session: Session) -> ConfigPublic:
    config = get_site_config(session=session)
    listener = effective_listener(settings, session=session)
    return ConfigPublic(
        client_id=effective_client_id(settings, session=session),
        ae_title=listener.ae_title,
        dicom_port=listener.port,
        remote_url=effective_remote_url(settings, session=session),
        min_images=config.min_images,
        slice_gap_tolerance=config.slice_gap_tolerance,
        inactivity_wait_s=config.inactivity_wait_s,
        abort_timeout_s=config.abort_timeout_s,
        reply_to_sender=config.reply_to_sender,
        restrict_sources=config.restrict_sources,
        retention_done_days=config.retention_done_days,
        retention_failed_days=config.retention_failed_days,
        require_patient_weight=config.require_patient_weight,
        quant_max_activity_change_pct=config.quant_max_activity_change_pct,
        quant_max_suvmax_change_pct=config.quant_max_suvmax_change_pct,
    )


def apply_update(update: BaseModel, *, session: Session) -> dict[str, object]:
    """Write the given fields to the configuration row; returns the changed ones, old and new."""
    return apply_config_values(update.model_dump(exclude_unset=True), session=session)


async def save(ctx: AppContext, update: BaseModel, audit: Auditor) -> set[str]:
    def change(session: Session) -> set[str]:
        changed = apply_update(update, session=session)
        if changed:
            audit("config.update", "site configuration", session=session, changed=changed)
        return set(changed)

    changed = await run_db(ctx, change)
    if changed & LISTENER_FIELDS:
        # Committed first: the listener re-reads the configuration from the database.
        await ctx.pipeline.reload_dicom_listener()
    if changed:
        log.info("site configuration changed: %s", ", ".join(sorted(changed)))
    return changed


@api.get("", response_model=ConfigPublic)
def api_get_config(ctx: ContextDep, session: SessionDep, _user: ApiViewer) -> ConfigPublic:
    return read_config(ctx.settings, session=session)


@api.put("", response_model=ConfigPublic)
async def api_update_config(
    body: ConfigUpdate, ctx: ContextDep, _user: ApiAdmin, audit: AuditDep
) -> ConfigPublic:
    await save(ctx, body, audit)
    return await run_db(ctx, lambda s: read_config(ctx.settings, session=s))


@api.post("/remote-test", response_model=RemoteTestPublic)
async def api_remote_test(ctx: ContextDep, _user: ApiAdmin) -> RemoteTestPublic:
    url = await run_db(ctx, lambda s: effective_remote_url(ctx.settings, session=s))
    return await run_in_threadpool(probe_remote, ctx.settings, url, REMOTE_TEST_TIMEOUT_S)


def _page(
    request: Request,
    ctx: AppContext,
    user: Principal,
    config: ConfigPublic,
    *,
    errors: dict[str, dict[str, str]] | None = None,
    values: dict[str, str] | None = None,
    remote_test: RemoteTestPublic | None = None,
    status_code: int = 200,
    sources_warning: str = "",
) -> HTMLResponse:
    shown = config.model_dump()
    shown.update(values or {})
    return render(
        request,
        ctx,
        "config.html",
        user=user,
        config=shown,
        errors=errors or {},
        remote_test=remote_test,
        status_code=status_code,
        sources_warning=sources_warning,
    )


@pages.get("/config", response_class=HTMLResponse)
def config_page(
    request: Request, ctx: ContextDep, session: SessionDep, user: PageViewer
) -> HTMLResponse:
    config = read_config(ctx.settings, session=session)
    return _page(request, ctx, user, config, sources_warning=everyone_refused(session=session))


SECTIONS: dict[str, type[BaseModel]] = {
    "site": SiteUpdate,
    "listener": ListenerUpdate,
    "thresholds": ThresholdsUpdate,
    "remote": RemoteUpdate,
    "retention": RetentionUpdate,
    "quant": QuantUpdate,
}


@pages.post("/config/{section}", response_model=None)
async def config_save(
    request: Request,
    section: str,
    ctx: ContextDep,
    user: PageAdmin,
    form: FormDep,
    audit: AuditDep,
) -> HTMLResponse | RedirectResponse:
    model = SECTIONS.get(section)
    if model is None:
        flash(request, "Unknown configuration section.", kind="error")
        return redirect("/config")
    data = dict(form)
    if model is ThresholdsUpdate:
        # An unchecked box is absent from the form; absent must mean "off", not "unchanged".
        for box in ("reply_to_sender", "restrict_sources"):
            data.setdefault(box, "false")
    if model is QuantUpdate:
        data.setdefault("require_patient_weight", "false")
    update, errors = parse_form(model, data)
    if update is not None and model is QuantUpdate:
        # An empty limit is "off": set to null, not left as it was.
        update = QuantUpdate.model_validate(
            {
                **dict.fromkeys(NULLABLE_SETTINGS),
                **update.model_dump(exclude_unset=True),
            }
        )
    if update is None:
        config = await run_db(ctx, lambda s: read_config(ctx.settings, session=s))
        return _page(
            request, ctx, user, config, errors={section: errors}, values=form, status_code=422
        )
    changed = await save(ctx, update, audit)
    flash(request, "Saved." if changed else "Nothing changed.")
    return redirect(f"/config#{section}")


@pages.post("/config-remote-test", response_class=HTMLResponse)
async def config_remote_test(
    request: Request, ctx: ContextDep, user: PageAdmin, _form: FormDep
) -> HTMLResponse:
    config = await run_db(ctx, lambda s: read_config(ctx.settings, session=s))
    result = await run_in_threadpool(
        probe_remote, ctx.settings, config.remote_url, REMOTE_TEST_TIMEOUT_S
    )
    return _page(request, ctx, user, config, remote_test=result)
